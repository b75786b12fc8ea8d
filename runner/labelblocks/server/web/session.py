"""The review page's sessions and state: signed session cookies, CSRF, the page's per-app state
(templates, background tasks), and rendering a template for a request."""

from __future__ import annotations

import hmac
import os
import secrets
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from fastapi import Request
from fastapi.responses import HTMLResponse, Response
from fastapi.templating import Jinja2Templates

from ...api.state import ServerState
from ...store import Store

HERE = Path(__file__).parent
COOKIE = "lb_session"
SESSION_SECONDS = 12 * 3600


class SignInRequired(Exception):
    """Raised by a page without a session: answered with the sign-in page (303)."""

    def __init__(self, next_url: str) -> None:
        super().__init__(next_url)
        self.next_url = next_url


class CsrfRefused(Exception):
    """A state-changing request without the session's CSRF token: 403."""


@dataclass
class Task:
    """A preview or run started from the page, in a thread of the server."""

    id: str
    action: str
    kind: str  # preview | run
    phase: str = "starting"
    done: int = 0
    total: int = 0
    job_id: int | None = None
    error: str | None = None
    finished: bool = False
    summary: dict[str, Any] = field(default_factory=dict)


class WebState:
    """The page's own state beside the API's: the session signer, the templates, the tasks."""

    def __init__(self, store: Store) -> None:
        from itsdangerous import URLSafeTimedSerializer

        self.signer = URLSafeTimedSerializer(_secret(store), salt="labelblocks-session")
        self.templates = Jinja2Templates(directory=str(HERE / "templates"))
        self.templates.env.globals["static"] = "/static"
        self.tasks: dict[str, Task] = {}
        self.lock = threading.Lock()
        self.thumbs = store.root / "thumbs"


def _secret(store: Store) -> str:
    """The project's session-signing secret (a 0600 file beside the database, made once; in
    memory for a read-only project)."""
    path = store.root / "web-secret"
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        pass
    value = secrets.token_hex(32)
    try:
        tmp = path.with_name(f".web-secret.{secrets.token_hex(4)}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(value)
        try:
            os.link(tmp, path)  # the first writer wins; another process reads what it wrote
        except FileExistsError:
            value = path.read_text().strip()
        finally:
            tmp.unlink(missing_ok=True)
    except OSError:
        pass
    return value


def web(request: Request) -> WebState:
    state: WebState = request.app.state.web
    return state


def api_state(request: Request) -> ServerState:
    state: ServerState = request.app.state.lb
    return state


# --- sessions ------------------------------------------------------------------------------------


@dataclass
class Session:
    who: str  # "key:ID" or "link"
    csrf: str


def new_session(w: WebState, who: str) -> str:
    return w.signer.dumps({"who": who, "csrf": secrets.token_urlsafe(24)})


def read_session(request: Request) -> Session | None:
    raw = request.cookies.get(COOKIE)
    if not raw:
        return None
    from itsdangerous import BadSignature

    try:
        data = web(request).signer.loads(raw, max_age=SESSION_SECONDS)
    except BadSignature:
        return None
    who = str(data.get("who", ""))
    if who.startswith("key:"):  # a revoked key's sessions end with it
        from ...store.keys import list_keys

        key_id = int(who[4:])
        if not any(k.id == key_id and k.revoked_at is None for k in list_keys(api_state(request).store)):
            return None
    return Session(who, str(data.get("csrf", "")))


def require_session(request: Request) -> Session:
    s = read_session(request)
    if s is None:
        raise SignInRequired(request.url.path + (f"?{request.url.query}" if request.url.query else ""))
    return s


async def require_csrf(request: Request, session: Session, form: Any = None) -> None:
    sent = request.headers.get("x-csrf-token")
    if sent is None and form is not None:
        sent = form.get("csrf")
    if not sent or not hmac.compare_digest(str(sent), session.csrf):
        raise CsrfRefused()


def set_cookie(response: Response, value: str, secure: bool) -> None:
    response.set_cookie(COOKIE, value, max_age=SESSION_SECONDS, httponly=True, samesite="strict", secure=secure,
                        path="/")


def safe_next(url: str | None) -> str:
    """Only a path on this site (no scheme, no host) is followed after sign-in."""
    if not url or not url.startswith("/") or url.startswith("//"):
        return "/"
    parts = urlsplit(url)
    return url if not parts.scheme and not parts.netloc else "/"


def render(request: Request, template: str, status: int = 200, **context: Any) -> HTMLResponse:
    session = read_session(request)
    return web(request).templates.TemplateResponse(
        request, template, {"csrf": session.csrf if session else "", "signed_in": session is not None, **context},
        status_code=status)
