"""The server of an organization (``labelblocks org serve``): its API
(:mod:`.routes.organizations`), a health check and the OpenAPI document behind a key."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from .. import __version__
from ..api.app import add_error_handlers
from ..api.background import running_note
from ..api.http import http_protocol
from ..api.state import BodyLimit, ErrorShape, Limits, error
from ..registry.org import Forbidden, Organization
from . import redact_access_log
from .routes import organizations


def create_org_app(folder: Path | str) -> FastAPI:
    """The API of the organization in ``folder``."""
    org = Organization(Path(folder))
    app = FastAPI(title="labelblocks organization", version=__version__, openapi_url=None, docs_url=None,
                  redoc_url=None, description="A labelblocks organization: its blocks, their versions and secrets, "
                  "in the protocol's organization transformation-block shapes, and pushing and pulling them.")
    app.state.org = org
    app.add_middleware(BodyLimit, limits=Limits())
    app.add_middleware(ErrorShape)
    add_error_handlers(app)

    @app.exception_handler(Forbidden)
    async def _forbidden(request: Request, exc: Forbidden) -> JSONResponse:
        return error(403, str(exc))

    @app.get("/healthz")
    def health() -> dict[str, Any]:
        return {"success": True, "status": "ok", "version": __version__, "organization": org.info.id}

    @app.get("/openapi.json", include_in_schema=False)
    def openapi(request: Request, _key: organizations.Member) -> JSONResponse:
        return JSONResponse(request.app.openapi())

    app.include_router(organizations.router)
    app.router.on_shutdown.append(org.close)
    return app


def serve_org(folder: Path, host: str, port: int, log_level: str = "info") -> None:
    """Serve the organization until interrupted."""
    import uvicorn

    app = create_org_app(folder)
    with running_note(app.state.org.data, host, port):
        config = uvicorn.Config(app, host=host, port=port, log_level=log_level, http=http_protocol())
        server = uvicorn.Server(config)
        redact_access_log()
        server.run()
