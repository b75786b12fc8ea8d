"""The application ``labelblocks serve`` runs: the protocol's API (:mod:`labelblocks.api`)
with the server's own routers (:mod:`.routes`) mounted beside it.

The server sits above the services: its routers may call any of them, which is why nothing
below it imports it.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

from fastapi import FastAPI

from ..api import Limits, create_api_app
from ..project import open_store
from ..store import Store
from .logs import redact_access_log
from .routes import ROUTERS
from .web import install


def create_app(project_dir: Path | str, store: Store | None = None, limits: Limits | None = None) -> FastAPI:
    """The server of the project in ``project_dir`` (its own store connection unless given)."""
    project_dir = Path(project_dir).resolve()
    store = store or open_store(project_dir)
    app = create_api_app(store, project_dir, limits, routers=ROUTERS)
    install(app, store)  # the review page, at /
    return app


def app_from_env() -> FastAPI:
    """The app factory of `labelblocks serve --workers N` (each worker process calls it)."""
    limits = Limits(**json.loads(os.environ["LABELBLOCKS_SERVE_LIMITS"]))
    redact_access_log()
    return create_app(os.environ["LABELBLOCKS_SERVE_PROJECT"], limits=limits)


def limits_env(limits: Limits) -> str:
    """``limits`` as app_from_env reads them from LABELBLOCKS_SERVE_LIMITS."""
    return json.dumps(dataclasses.asdict(limits))
