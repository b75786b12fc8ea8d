"""The HTTP server of a project (``labelblocks serve``), and the same server run in the
background on loopback."""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

from ..api import PROJECT_ID, JobScope, Limits, LoopbackServer, ServerState
from ..api.background import running_note, running_url
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


_KEY_IN_QUERY = re.compile(r"(api_key=)[^&\s\"]*")


class RedactKeys(logging.Filter):
    """Keys never reach the server's log: the access log's request line shows ``api_key=***``
    (the Roboflow clients send the key in the query string)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(_KEY_IN_QUERY.sub(r"\1***", a) if isinstance(a, str) else a for a in record.args)
        if isinstance(record.msg, str):
            record.msg = _KEY_IN_QUERY.sub(r"\1***", record.msg)
        return True


def redact_access_log() -> None:
    for name in ("uvicorn.access", "uvicorn.error"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, RedactKeys) for f in logger.filters):
            logger.addFilter(RedactKeys())


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
