"""An application served on loopback in a thread of this process (an ephemeral port unless
given): the API an external step serves its block, or ``labelblocks serve``'s app in tests."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType

from fastapi import FastAPI

from ..errors import LabelblocksError
from .http import http_protocol
from .state import ServerState


class LoopbackServer:
    """``app`` on 127.0.0.1. Use as a context manager; ``url`` is the API base (``.../v1``)."""

    def __init__(self, app: FastAPI, port: int = 0) -> None:
        import uvicorn

        self.app = app
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", port))
        self.port = int(self._sock.getsockname()[1])
        config = uvicorn.Config(self.app, log_level="warning", access_log=False, lifespan="off", http=http_protocol())
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [self._sock]},
                                        name="labelblocks-api", daemon=True)

    @property
    def state(self) -> ServerState:
        """The project's server state (for an app made by :func:`create_api_app`)."""
        state: ServerState = self.app.state.lb
        return state

    @property
    def host(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"{self.host}/v1"

    def start(self) -> LoopbackServer:
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

    def __enter__(self) -> LoopbackServer:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def __repr__(self) -> str:  # pragma: no cover - debugging aid
        return f"{type(self).__name__}({self.url})"


RUNNING = "server.json"  # beside a served project's or organization's database: {pid, host, port}


@contextlib.contextmanager
def running_note(folder: Path, host: str, port: int) -> Iterator[None]:
    """While the block runs, ``folder/server.json`` says this process serves at host:port
    (what `labelblocks review` and `org show` read); removed after, unless another process
    wrote its own meanwhile. A folder that cannot be written is served all the same."""
    note = folder / RUNNING
    try:
        tmp = note.with_name(f".{RUNNING}.{os.getpid()}")
        tmp.write_text(json.dumps({"pid": os.getpid(), "host": host, "port": port}))
        os.replace(tmp, note)
    except OSError:  # a read-only folder: only not found by the readers
        yield
        return
    try:
        yield
    finally:
        try:
            if json.loads(note.read_text()).get("pid") == os.getpid():
                note.unlink()
        except (OSError, ValueError):
            pass


def running_url(folder: Path) -> str | None:
    """The base URL (``http://HOST:PORT``) that a live process's ``folder/server.json`` names, if any."""
    try:
        info = json.loads((folder / RUNNING).read_text())
        os.kill(int(info["pid"]), 0)
        host = "127.0.0.1" if info.get("host") in ("0.0.0.0", "::", "") else info["host"]
        return f"http://{host}:{int(info['port'])}"
    except (OSError, ValueError, KeyError, TypeError):
        return None
