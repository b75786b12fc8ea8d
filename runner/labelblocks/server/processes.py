"""The server's processes: ``labelblocks serve`` (uvicorn, with the running note `labelblocks
review` reads), the same app in a thread on loopback (:class:`BackgroundServer`), and finding a
server of a project that is running."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..api import Limits, LoopbackServer
from ..api.background import running_note, running_url
from ..api.http import http_protocol
from ..store import Store
from .app import create_app
from .logs import redact_access_log


class BackgroundServer(LoopbackServer):
    """The project's server on 127.0.0.1 (an ephemeral port unless given), in a thread of this
    process. Use as a context manager; ``url`` is the API base (``.../v1``)."""

    def __init__(self, project_dir: Path, store: Store | None = None, port: int = 0,
                 limits: Limits | None = None) -> None:
        super().__init__(create_app(project_dir, store=store, limits=limits), port)


def serve(project_dir: Path, host: str, port: int, limits: Limits | None = None, **uvicorn_options: Any) -> None:
    """Serve the project's API and review page until interrupted (``labelblocks serve``);
    while it runs, the project's data folder names it (``server.json``) so that `labelblocks
    review` finds it."""
    import uvicorn

    app = create_app(project_dir, limits=limits)
    with running_note(app.state.lb.store.root, host, port):
        config = uvicorn.Config(app, host=host, port=port, log_level=uvicorn_options.pop("log_level", "info"),
                                http=http_protocol(), **uvicorn_options)
        server = uvicorn.Server(config)
        redact_access_log()  # after the config set up uvicorn's loggers
        server.run()


def running_server(store: Store) -> str | None:
    """The base URL of a server of this project that answers its health check, if any."""
    import requests

    base = running_url(store.root)
    if base is None:
        return None
    try:
        ok = requests.get(base + "/healthz", timeout=2).ok
    except requests.RequestException:
        return None
    return base if ok else None
