"""What every router of the API shares: the server's state, its limits, who called (as a
FastAPI dependency), the project check, the error shape and the request-body limit.

Every route but the health check needs a project API key in ``x-api-key`` (see
:mod:`labelblocks.store.keys`), or a job key: a key the runner makes for one step of one job while
an external block runs. Errors have the protocol's shape ``{"success": false, "error": "..."}``.
"""

from __future__ import annotations

import logging
import secrets as pysecrets
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any

from fastapi import Depends, Query, Request
from fastapi import Path as PathParam
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..errors import InvalidInput, storage_error
from ..media import MAX_IMAGE_PIXELS
from ..model import MAX_INT, parse_json
from ..store import Store
from ..store.keys import LAST_USED_EVERY, hash_key, touch_key, verify_key
from .protocol import ProjectInfo

PROJECT_ID = 1
MB = 1024 * 1024

# ids, offsets and counts in paths and queries: what a database integer holds (a larger one is
# a 400 with the bound, not an overflow deep in the driver)
SampleId = Annotated[int, PathParam(ge=0, le=MAX_INT)]
JobId = Annotated[int, PathParam(ge=0, le=MAX_INT)]
QueryInt = Annotated[int, Query(ge=0, le=MAX_INT)]
OptionalQueryInt = Annotated[int | None, Query(ge=0, le=MAX_INT)]


@dataclass
class Limits:
    json_bytes: int = 16 * MB  # a JSON request body
    upload_bytes: int = 512 * MB  # one ingestion request, all files together
    file_bytes: int = 128 * MB  # one uploaded file
    files: int = 10_000  # files in one ingestion request
    page: int = 10_000  # samples in one list page
    # audio values in one sample answer (the protocol's limitPayloadValues is capped at it, and
    # is it when not given): 100,000 values are 2 s at 48 kHz, about 2.5 MB of JSON; the whole
    # recording is /wav's answer (binary, streamed)
    payload_values: int = 100_000
    max_pixels: int = MAX_IMAGE_PIXELS  # the largest uploaded image (width x height)
    # inference (labelblocks.inference): warm models kept, how long a batch waits for company,
    # which answered images stay in the project (off | all | low-confidence:T)
    max_models: int = 4
    max_batch_delay_ms: float = 5.0
    keep_images: str = "off"


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

    def check_sample(self, sample_id: int) -> None:
        """403 when a job key asks for a sample outside its job: a job key reads and writes
        its job's samples only."""
        if self.scope is not None and sample_id not in self.scope.sample_ids:
            raise ApiError(403, f"sample {sample_id} is not part of job {self.scope.job_id}'s step {self.scope.step}")

    def check_job(self, job_id: int) -> None:
        """403 when a job key asks for another job's proposals."""
        if self.scope is not None and job_id != self.scope.job_id:
            raise ApiError(403, f"this key belongs to job {self.scope.job_id}, not job {job_id}")


class ServerState:
    def __init__(self, store: Store, project: ProjectInfo, limits: Limits) -> None:
        self.store = store
        self.project = project
        self.limits = limits
        self._scopes: dict[str, JobScope] = {}
        self._lock = threading.Lock()
        self._used: dict[int, float] = {}  # key id -> last use recorded (or being recorded)

    def _note_use(self, key_id: int, recorded: float | None) -> None:
        """Record a key's use, at most once a minute, in the background: a request never waits
        for the database's write lock for it, and a read-only project still serves reads."""
        now = time.time()
        with self._lock:
            last = max(recorded or 0.0, self._used.get(key_id, 0.0))
            if now - last < LAST_USED_EVERY:
                return
            self._used[key_id] = now

        def write() -> None:
            try:
                touch_key(self.store, key_id, now)
            except Exception:  # a busy, full or read-only database: the next use retries
                with self._lock:
                    self._used[key_id] = last

        threading.Thread(target=write, name="labelblocks-key-use", daemon=True).start()

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
            record = verify_key(self.store, key)
            if record is not None:
                self._note_use(record.id, record.last_used_at)
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


class ProjectKeyOnly:
    """A dependency composed on :data:`Auth`: the caller must hold a project key; a job key
    (one step of one job) is refused with 403, saying what it cannot do."""

    def __init__(self, what: str) -> None:
        self.what = what

    def __call__(self, a: Auth) -> Caller:
        if a.scope is not None:
            raise ApiError(403, f"a job's key cannot {self.what}: use a project key")
        return a


# the project-key-only routes, by what a job key may not do there
DeletesSamples = Annotated[Caller, Depends(ProjectKeyOnly("delete samples"))]
RenamesSamples = Annotated[Caller, Depends(ProjectKeyOnly("rename samples"))]
MovesSamples = Annotated[Caller, Depends(ProjectKeyOnly("move samples"))]
WritesInBatches = Annotated[Caller, Depends(ProjectKeyOnly("write in batches"))]
ReadsProjectModels = Annotated[Caller, Depends(ProjectKeyOnly("read the project's learned models"))]


def checked_project(project_id: int, state: State, _auth: Auth) -> int:
    """The path's project id, once the caller is known: 404 for another project."""
    if project_id != state.project.id:
        raise ApiError(404, f"no project {project_id}: this server serves project {state.project.id}")
    return project_id


ProjectId = Annotated[int, Depends(checked_project)]


def json_object(raw: bytes) -> dict[str, Any]:
    """A request body as a JSON object (an empty body is ``{}``); InvalidInput for anything else."""
    data = parse_json(raw or b"{}", "request body", "a JSON body")
    if not isinstance(data, dict):
        raise InvalidInput(f"expected a JSON object, got {type(data).__name__}")
    return data


async def json_body(request: Request) -> dict[str, Any]:
    """The request's JSON object body (400 for anything else)."""
    try:
        return json_object(await request.body())
    except InvalidInput as e:
        raise ApiError(400, str(e)) from None


def header(request: Request, name: str) -> str | None:
    """A request header's text: its bytes as UTF-8 (HTTP hands them over as Latin-1), or as
    Latin-1 where they are not valid UTF-8."""
    value = request.headers.get(name)
    if value is None:
        return None
    raw = value.encode("latin-1")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return value


def error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"success": False, "error": message}, status_code=status)


# --- request bodies -------------------------------------------------------------------------------


class BodyTooLarge(Exception):
    """Raised while a request body is read, once it passes its limit (answered with 413)."""


class _TrackedSend:
    """An ASGI ``send`` that remembers whether the response has started: an error can be
    answered only before."""

    def __init__(self, send: Send) -> None:
        self.send = send
        self.started = False

    async def __call__(self, msg: Message) -> None:
        if msg["type"] == "http.response.start":
            self.started = True
        await self.send(msg)


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
        tracked = _TrackedSend(send)

        async def counted() -> Message:
            nonlocal seen
            msg = await receive()
            if msg["type"] == "http.request":
                seen += len(msg.get("body", b""))
                if seen > limit:
                    raise BodyTooLarge()
            return msg

        try:
            await self.app(scope, counted, tracked)
        except BodyTooLarge:
            if not tracked.started:
                await too_big(scope, receive, send)


# --- errors no handler expected -------------------------------------------------------------------

log = logging.getLogger("labelblocks.api")


class ErrorShape:
    """Every error answer in the protocol's JSON shape, also for what no handler expected: the
    storage refusing a write (a full disk is 507, a read-only project 503) and, for a bug, a
    500 with a JSON body (its traceback goes to the server's log, not to the caller)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        tracked = _TrackedSend(send)
        try:
            await self.app(scope, receive, tracked)
        except Exception as exc:
            if tracked.started:
                raise
            known = storage_error(exc)
            if known is not None:
                await error(known.status, str(known))(scope, receive, send)
                return
            log.exception("unexpected error answering %s %s", scope.get("method"), scope.get("path"))
            await error(500, f"internal error ({type(exc).__name__}): the server's log has the details")(
                scope, receive, send)
