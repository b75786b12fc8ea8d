"""The HTTP server of a project (``labelblocks serve``), and the same server run in the
background on loopback."""

from __future__ import annotations

import json
import logging
import os
import re
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


RUNNING = "server.json"  # beside the database while a server runs: {pid, host, port}
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
    note = app.state.lb.store.root / RUNNING
    try:
        tmp = note.with_name(f".{RUNNING}.{os.getpid()}")
        tmp.write_text(json.dumps({"pid": os.getpid(), "host": host, "port": port}))
        os.replace(tmp, note)
    except OSError:  # a read-only project: it is served all the same, only not found by `review`
        note = None
    try:
        config = uvicorn.Config(app, host=host, port=port, log_level=uvicorn_options.pop("log_level", "info"),
                                http=http_protocol(), **uvicorn_options)
        server = uvicorn.Server(config)
        redact_access_log()  # after the config set up uvicorn's loggers
        server.run()
    finally:
        if note is not None:
            try:
                if json.loads(note.read_text()).get("pid") == os.getpid():
                    note.unlink()
            except (OSError, ValueError):
                pass


def running_server(store: Store) -> str | None:
    """The base URL of a server of this project that answers its health check, if any."""
    import requests

    try:
        info = json.loads((store.root / RUNNING).read_text())
        os.kill(int(info["pid"]), 0)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    host = "127.0.0.1" if info.get("host") in ("0.0.0.0", "::", "") else info["host"]
    base = f"http://{host}:{int(info['port'])}"
    try:
        ok = requests.get(base + "/healthz", timeout=2).ok
    except requests.RequestException:
        return None
    return base if ok else None
