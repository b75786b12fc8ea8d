"""Installing the review page on the server's app: its state, routes, static files and handlers."""

from __future__ import annotations

from urllib.parse import quote

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles

from ...store import Store
from . import pages
from .session import HERE, CsrfRefused, SignInRequired, WebState


def install(app: FastAPI, store: Store) -> None:
    """Add the page to the server's ``app``: its state, routes, static files and handlers."""
    app.state.web = WebState(store)
    app.mount("/static", StaticFiles(directory=str(HERE / "static")), name="static")
    app.include_router(pages.router)

    @app.exception_handler(SignInRequired)
    async def _sign_in(request: Request, exc: SignInRequired) -> Response:
        return RedirectResponse(f"/signin?next={quote(exc.next_url, safe='')}", status_code=303)

    @app.exception_handler(CsrfRefused)
    async def _csrf(request: Request, exc: CsrfRefused) -> Response:
        return HTMLResponse("<!doctype html><title>Refused</title><p>Refused: the request did not carry this "
                            "session's CSRF token. Reload the page and try again.</p>", status_code=403)

