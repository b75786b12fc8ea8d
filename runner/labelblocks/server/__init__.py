"""The HTTP server of a project (``labelblocks serve``), and the same server run in the
background on loopback."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..api import PROJECT_ID, JobScope, Limits, LoopbackServer, ServerState
from ..api.http import http_protocol
from ..store import Store
from .app import create_app

__all__ = ["PROJECT_ID", "BackgroundServer", "JobScope", "Limits", "ServerState", "create_app"]


class BackgroundServer(LoopbackServer):
    """The project's server on 127.0.0.1 (an ephemeral port unless given), in a thread of this
    process. Use as a context manager; ``url`` is the API base (``.../v1``)."""

    def __init__(self, project_dir: Path, store: Store | None = None, port: int = 0,
                 limits: Limits | None = None) -> None:
        super().__init__(create_app(project_dir, store=store, limits=limits), port)


def serve(project_dir: Path, host: str, port: int, limits: Limits | None = None, **uvicorn_options: Any) -> None:
    """Serve the project's API until interrupted (``labelblocks serve``)."""
    import uvicorn

    app = create_app(project_dir, limits=limits)
    uvicorn.run(app, host=host, port=port, log_level=uvicorn_options.pop("log_level", "info"), http=http_protocol(),
                **uvicorn_options)
