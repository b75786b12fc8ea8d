"""The protocol's API as one application: its routers over the store, the protocol's error
shape, and the request-body limit. It is what an external step serves its block on loopback
(:mod:`labelblocks.executors.external`) and what ``labelblocks serve`` mounts
(:mod:`labelblocks.server`)."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path

from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from .. import __version__
from ..errors import LabelblocksError, NotFound, StorageError
from ..store import DB_NAME, Store
from . import data_management, ingestion, media, projects, proposals, raw_data
from .protocol import ProjectInfo
from .state import PROJECT_ID, ApiError, BodyLimit, ErrorShape, Limits, ServerState, error

# the protocol's routers, in the order their paths are matched
# (data_management's /raw-data/count and /raw-data/metadata before raw_data's /raw-data/{sample_id})
ROUTERS: tuple[APIRouter, ...] = (projects.router, proposals.router, data_management.router, raw_data.router,
                                  media.router, ingestion.router)


def create_api_app(store: Store, project_dir: Path, limits: Limits | None = None,
                   routers: tuple[APIRouter, ...] = ()) -> FastAPI:
    """The protocol's API of the project in ``project_dir`` over ``store``, with ``routers``
    added before the protocol's."""
    db = store.root / DB_NAME
    created = datetime.fromtimestamp(db.stat().st_ctime if db.exists() else time.time(), tz=UTC)
    state = ServerState(store, ProjectInfo(PROJECT_ID, project_dir.name, "labelblocks", created), limits or Limits())
    # the OpenAPI document is served behind the key like everything but the health check
    app = FastAPI(title="labelblocks", version=__version__, openapi_url=None, docs_url=None, redoc_url=None,
                  description="The Edge Impulse AI-labeling protocol's raw-data and ingestion API for a labelblocks project.")
    app.state.lb = state
    app.add_middleware(BodyLimit, limits=state.limits)
    app.add_middleware(ErrorShape)
    add_error_handlers(app)
    for router in (*routers, *ROUTERS):
        app.include_router(router)
    return app


def add_error_handlers(app: FastAPI) -> None:
    """Answer labelblocks' errors, invalid requests and HTTP errors in the protocol's JSON shape."""
    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return error(exc.status, exc.message)

    @app.exception_handler(NotFound)
    async def _not_found(request: Request, exc: NotFound) -> JSONResponse:
        return error(404, str(exc))

    @app.exception_handler(StorageError)
    async def _storage(request: Request, exc: StorageError) -> JSONResponse:
        return error(exc.status, str(exc))

    @app.exception_handler(LabelblocksError)
    async def _bad(request: Request, exc: LabelblocksError) -> JSONResponse:
        return error(400, str(exc))

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        parts = []
        for e in exc.errors():
            loc = ".".join(str(p) for p in e.get("loc", ()) if p != "body")
            parts.append(f"{loc}: {e.get('msg')}" if loc else str(e.get("msg")))
        return error(400, "invalid request: " + "; ".join(parts))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error(exc.status_code, str(exc.detail))
