"""What every router of the API shares: the server's state, its limits, who called (as a
FastAPI dependency), the project check, the error shape and the request-body limit.

Every route but the health check needs a project API key in ``x-api-key`` (see
:mod:`labelblocks.store.keys`), or a job key: a key the runner makes for one step of one job while
an external block runs. Errors have the protocol's shape ``{"success": false, "error": "..."}``.
"""

from __future__ import annotations

import json
import secrets as pysecrets
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..store import Store
from ..store.keys import hash_key, verify_key
from .protocol import ProjectInfo

PROJECT_ID = 1
MB = 1024 * 1024


@dataclass
class Limits:
    json_bytes: int = 16 * MB  # a JSON request body
    upload_bytes: int = 512 * MB  # one ingestion request, all files together
    file_bytes: int = 128 * MB  # one uploaded file
    files: int = 10_000  # files in one ingestion request
    page: int = 10_000  # samples in one list page


@dataclass
class JobScope:
    """What a job key may do: one step of one job, over the job's samples."""

    job_id: int
    step: int
    sample_ids: frozenset[int]
    # the samples' revisions when the step began: a change staged under a job key is reusable by
    # a later job of the same step for that revision (a revision read later could be newer than
    # what the block read)
    revisions: Mapping[int, float] = field(default_factory=dict)
    proposed: set[int] = field(default_factory=set)  # samples with a proposal from this step
    # the secret values the step received: redacted from every change it stages
    secrets: tuple[str, ...] = ()


class ApiError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class Caller:
    """Who called: a project key (scope None) or a job key."""

    def __init__(self, scope: JobScope | None) -> None:
        self.scope = scope


class ServerState:
    def __init__(self, store: Store, project: ProjectInfo, limits: Limits) -> None:
        self.store = store
        self.project = project
        self.limits = limits
        self._scopes: dict[str, JobScope] = {}
        self._lock = threading.Lock()

    def add_job_key(self, scope: JobScope) -> str:
        """A new key valid only for ``scope``; forget it with :meth:`remove_job_key`."""
        key = "ei_job_" + pysecrets.token_hex(24)
        with self._lock:
            self._scopes[hash_key(key)] = scope
        return key

    def remove_job_key(self, key: str) -> None:
        with self._lock:
            self._scopes.pop(hash_key(key), None)

    def authenticate(self, key: str | None) -> Caller:
        if key:
            with self._lock:
                scope = self._scopes.get(hash_key(key))
            if scope is not None:
                return Caller(scope)
            if verify_key(self.store, key) is not None:
                return Caller(None)
        raise ApiError(401, "missing or invalid API key: pass a project key (`labelblocks keys create`) in x-api-key")


# --- dependencies ---------------------------------------------------------------------------------


def get_state(request: Request) -> ServerState:
    state: ServerState = request.app.state.lb
    return state


State = Annotated[ServerState, Depends(get_state)]


def caller(request: Request, state: State) -> Caller:
    """The caller's key, checked (401 without a valid one)."""
    return state.authenticate(request.headers.get("x-api-key"))


Auth = Annotated[Caller, Depends(caller)]


def checked_project(project_id: int, state: State, _auth: Auth) -> int:
    """The path's project id, once the caller is known: 404 for another project."""
    if project_id != state.project.id:
        raise ApiError(404, f"no project {project_id}: this server serves project {state.project.id}")
    return project_id


ProjectId = Annotated[int, Depends(checked_project)]


async def json_body(request: Request) -> dict[str, Any]:
    """The request's JSON object body (400 for anything else)."""
    raw = await request.body()
    try:
        data = json.loads(raw or b"{}")
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ApiError(400, f"expected a JSON body: {e}") from None
    if not isinstance(data, dict):
        raise ApiError(400, f"expected a JSON object, got {type(data).__name__}")
    return data


def error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"success": False, "error": message}, status_code=status)


# --- request bodies -------------------------------------------------------------------------------


class BodyTooLarge(Exception):
    """Raised while a request body is read, once it passes its limit (answered with 413)."""


class BodyLimit:
    """Refuses request bodies over the limit (413) before they are read whole: by
    Content-Length up front, and by counting what arrives when it is absent or wrong."""

    def __init__(self, app: ASGIApp, limits: Limits) -> None:
        self.app = app
        self.limits = limits

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        limit = self.limits.upload_bytes if path.startswith("/api/") else self.limits.json_bytes
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        too_big = error(413, f"request body too large: the limit is {limit} bytes")
        if length is not None:
            try:
                if int(length) > limit:
                    await too_big(scope, receive, send)
                    return
            except ValueError:
                await error(400, "invalid Content-Length header")(scope, receive, send)
                return
        seen = 0
        started = False

        async def counted() -> Message:
            nonlocal seen
            msg = await receive()
            if msg["type"] == "http.request":
                seen += len(msg.get("body", b""))
                if seen > limit:
                    raise BodyTooLarge()
            return msg

        async def tracked_send(msg: Message) -> None:
            nonlocal started
            if msg["type"] == "http.response.start":
                started = True
            await send(msg)

        try:
            await self.app(scope, counted, tracked_send)
        except BodyTooLarge:
            if not started:
                await too_big(scope, receive, send)
