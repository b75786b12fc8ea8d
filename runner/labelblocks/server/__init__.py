"""The HTTP server of a project (``labelblocks serve``): the protocol's API with the server's
own routers and the review page (:mod:`.app`), its processes (:mod:`.processes`) and logs
(:mod:`.logs`). This module only hands their names on, lazily (the CLI's start-up stays light)."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__all__ = ["PROJECT_ID", "BackgroundServer", "JobScope", "Limits", "ServerState", "create_app",
           "redact_access_log", "running_server", "serve"]

_FACE = {"PROJECT_ID": "..api", "JobScope": "..api", "Limits": "..api", "ServerState": "..api",
         "create_app": ".app", "BackgroundServer": ".processes", "serve": ".processes", "running_server": ".processes",
         "redact_access_log": ".logs"}


def __getattr__(name: str) -> Any:
    module = _FACE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module, __name__), name)


if TYPE_CHECKING:
    from ..api import PROJECT_ID, JobScope, Limits, ServerState
    from .app import create_app
    from .logs import redact_access_log
    from .processes import BackgroundServer, running_server, serve
