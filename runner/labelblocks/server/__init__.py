"""The HTTP API of a project (``labelblocks serve``), and the same server run in the
background on loopback for external blocks."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path
from types import TracebackType
from typing import Any

from ..errors import LabelblocksError
from ..store import Store
from .app import PROJECT_ID, JobScope, Limits, ServerState, create_app

__all__ = ["PROJECT_ID", "BackgroundServer", "JobScope", "Limits", "ServerState", "create_app"]


class BackgroundServer:
    """The project's API on 127.0.0.1 (an ephemeral port unless given), in a thread of this
    process. Use as a context manager; ``url`` is the API base (``.../v1``)."""

    def __init__(self, project_dir: Path, store: Store | None = None, port: int = 0,
                 limits: Limits | None = None) -> None:
        import uvicorn

        self.app = create_app(project_dir, store=store, limits=limits)
        self.state: ServerState = self.app.state.lb
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", port))
        self.port = int(self._sock.getsockname()[1])
        config = uvicorn.Config(self.app, log_level="warning", access_log=False, lifespan="off")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [self._sock]},
                                        name="labelblocks-api", daemon=True)

    @property
    def host(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"{self.host}/v1"

    def start(self) -> BackgroundServer:
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise LabelblocksError("the API server did not start on loopback")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        if self._thread.is_alive():
            self._thread.join(timeout=10)
        self._sock.close()

    def __enter__(self) -> BackgroundServer:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def __repr__(self) -> str:  # pragma: no cover - debugging aid
        return f"BackgroundServer({self.url})"


def serve(project_dir: Path, host: str, port: int, limits: Limits | None = None, **uvicorn_options: Any) -> None:
    """Serve the project's API until interrupted (``labelblocks serve``)."""
    import uvicorn

    app = create_app(project_dir, limits=limits)
    uvicorn.run(app, host=host, port=port, log_level=uvicorn_options.pop("log_level", "info"), **uvicorn_options)
