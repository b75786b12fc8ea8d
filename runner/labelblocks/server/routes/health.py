"""Liveness (no key) and the OpenAPI document (behind the key)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from ... import __version__
from ...api.state import Auth

router = APIRouter(tags=["health"])


@router.get("/healthz")
def health() -> dict[str, Any]:
    """Liveness: needs no key."""
    return {"success": True, "status": "ok", "version": __version__}


@router.get("/openapi.json", include_in_schema=False)
def openapi(request: Request, _auth: Auth) -> JSONResponse:
    return JSONResponse(request.app.openapi())
