"""The protocol's HTTP API over a project's store: what a protocol block talks to.

Routers, one per resource (projects, raw data, media, proposed changes, ingestion), over the
store and the change algebra only; this package imports no service. The external executor
serves it on loopback with a job-scoped key; :mod:`labelblocks.server` mounts it beside its
own routers.
"""

from __future__ import annotations

from .app import ROUTERS, create_api_app
from .background import LoopbackServer
from .state import MB, PROJECT_ID, ApiError, JobScope, Limits, ServerState

__all__ = ["MB", "PROJECT_ID", "ROUTERS", "ApiError", "JobScope", "Limits", "LoopbackServer", "ServerState",
           "create_api_app"]
