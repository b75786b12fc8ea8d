"""The HTTP API: the protocol's raw-data endpoints, its ingestion service and a health check.

Every route but the health check needs a project API key in ``x-api-key`` (see
:mod:`labelblocks.keys`), or a job key: a key the runner makes for one step of one job while
an external block runs. With a job key, reading a sample with ``proposedActionsJobId`` shows
the job's earlier steps applied, ``propose-changes`` stages the step's result, and the
direct writes (bounding-boxes, edit-label, metadata, ...) are staged as that step's proposal
too: nothing reaches the dataset before the runner applies the job. A job key cannot upload;
listing ``category=training`` with it includes validation samples, because published blocks
find their samples by paging training, then testing.

Errors have the protocol's shape ``{"success": false, "error": "..."}``.
"""

from __future__ import annotations

import io
import json
import secrets as pysecrets
import threading
import time
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .. import __version__
from ..errors import InvalidInput, LabelblocksError, NotFound
from ..filters import SampleFilter, parse_metadata_json
from ..keys import hash_key, verify_key
from ..model import (
    CATEGORIES,
    Sample,
    SampleChange,
    parse_boxes,
    parse_change,
    parse_structured_labels,
)
from ..runner import job_proposals, overlay, stage_proposal
from ..store import Store
from .protocol import ProjectInfo, payload_json, sample_json

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


class ApiError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class _Auth:
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

    def authenticate(self, key: str | None) -> _Auth:
        if key:
            with self._lock:
                scope = self._scopes.get(hash_key(key))
            if scope is not None:
                return _Auth(scope)
            if verify_key(self.store, key) is not None:
                return _Auth(None)
        raise ApiError(401, "missing or invalid API key: pass a project key (`labelblocks keys create`) in x-api-key")


class _BodyLimit:
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
        too_big = _error(413, f"request body too large: the limit is {limit} bytes")
        if length is not None:
            try:
                if int(length) > limit:
                    await too_big(scope, receive, send)
                    return
            except ValueError:
                await _error(400, "invalid Content-Length header")(scope, receive, send)
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


class BodyTooLarge(Exception):
    """Raised while a request body is read, once it passes its limit (answered with 413)."""


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"success": False, "error": message}, status_code=status)


def create_app(project_dir: Path | str, store: Store | None = None, limits: Limits | None = None) -> FastAPI:
    """The API of the project in ``project_dir`` (its own store connection unless given)."""
    from ..project import open_store

    project_dir = Path(project_dir).resolve()
    store = store or open_store(project_dir)
    db = store.root / "project.db"
    created = datetime.fromtimestamp(db.stat().st_ctime if db.exists() else time.time(), tz=UTC)
    state = ServerState(store, ProjectInfo(PROJECT_ID, project_dir.name, "labelblocks", created), limits or Limits())
    # the OpenAPI document is served below, behind the key like everything but the health check
    app = FastAPI(title="labelblocks", version=__version__, openapi_url=None, docs_url=None, redoc_url=None,
                  description="The Edge Impulse AI-labeling protocol's raw-data and ingestion API for a labelblocks project.")
    app.state.lb = state
    app.add_middleware(_BodyLimit, limits=state.limits)

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return _error(exc.status, exc.message)

    @app.exception_handler(NotFound)
    async def _not_found(request: Request, exc: NotFound) -> JSONResponse:
        return _error(404, str(exc))

    @app.exception_handler(LabelblocksError)
    async def _bad(request: Request, exc: LabelblocksError) -> JSONResponse:
        return _error(400, str(exc))

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        parts = []
        for e in exc.errors():
            loc = ".".join(str(p) for p in e.get("loc", ()) if p != "body")
            parts.append(f"{loc}: {e.get('msg')}" if loc else str(e.get("msg")))
        return _error(400, "invalid request: " + "; ".join(parts))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return _error(exc.status_code, str(exc.detail))

    def auth(request: Request) -> _Auth:
        return state.authenticate(request.headers.get("x-api-key"))

    def check_project(project_id: int) -> None:
        if project_id != state.project.id:
            raise ApiError(404, f"no project {project_id}: this server serves project {state.project.id}")

    def sample_of(a: _Auth, sample_id: int, job_id: int | None = None) -> Sample:
        s = store.get_sample(sample_id)
        if job_id is not None:
            [s] = overlay(store, job_id, [s], _overlay_step(a, job_id))
        return s

    async def body(request: Request) -> dict[str, Any]:
        raw = await request.body()
        try:
            data = json.loads(raw or b"{}")
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ApiError(400, f"expected a JSON body: {e}") from None
        if not isinstance(data, dict):
            raise ApiError(400, f"expected a JSON object, got {type(data).__name__}")
        return data

    def write(a: _Auth, sample_id: int, change: SampleChange, direct: Callable[[], Any]) -> JSONResponse:
        """A write from a block: staged as the step's proposal under a job key, else applied."""
        if a.scope is not None:
            _stage(state, a.scope, sample_id, change, merge=True)
        else:
            direct()
        return JSONResponse({"success": True})

    # --- health, projects --------------------------------------------------------------------

    @app.get("/healthz", tags=["health"])
    def health() -> dict[str, Any]:
        """Liveness: needs no key."""
        return {"success": True, "status": "ok", "version": __version__}

    @app.get("/openapi.json", include_in_schema=False)
    def openapi(request: Request) -> JSONResponse:
        auth(request)
        return JSONResponse(app.openapi())

    @app.get("/v1/api/projects", tags=["projects"])
    def list_projects(request: Request) -> dict[str, Any]:
        auth(request)
        return {"success": True, "projects": [state.project.to_json()]}

    @app.get("/v1/api/{project_id}", tags=["projects"])
    def project_info(project_id: int, request: Request) -> dict[str, Any]:
        auth(request)
        check_project(project_id)
        return {"success": True, "project": state.project.to_json()}

    # --- raw data: reading -------------------------------------------------------------------

    @app.get("/v1/api/{project_id}/raw-data", tags=["raw-data"])
    def list_samples(project_id: int, request: Request, category: str = "all", limit: int = 20, offset: int = 0,
                     labels: str | None = None, filename: str | None = None, search: str | None = None,
                     includeDisabled: str | None = None, proposedActionsJobId: int | None = None,
                     sortBy: str | None = None, dataType: str | None = None, minId: int | None = None,
                     maxId: int | None = None, metadata: str | None = None) -> dict[str, Any]:
        a = auth(request)
        check_project(project_id)
        f = _list_filter(category, labels, filename or search, includeDisabled, dataType, minId, maxId, metadata)
        if a.scope is not None and f.categories == ["training"]:
            # published blocks find their samples by paging training, then testing: a job's
            # validation samples (from `labelblocks split`) must not be skipped silently
            f.categories = ["training", "validation"]
        if limit < 0 or offset < 0:
            raise ApiError(400, f"expected limit and offset >= 0, got limit={limit} offset={offset}")
        limit = min(limit, state.limits.page)
        desc = (sortBy or "id-desc") == "id-desc"
        if sortBy not in (None, "id-desc", "id-asc"):
            raise ApiError(400, f"sortBy: expected id-asc or id-desc, got {sortBy!r}")
        page = store.list_samples(f, limit=limit, offset=offset, descending=desc)
        if proposedActionsJobId is not None:
            page = overlay(store, proposedActionsJobId, page, _overlay_step(a, proposedActionsJobId))
        return {"success": True, "samples": [sample_json(s, project_id) for s in page], "totalCount": store.count(f)}

    @app.get("/v1/api/{project_id}/raw-data/ai-actions-preview/{job_id}/proposed-changes", tags=["raw-data"])
    def proposed_changes(project_id: int, job_id: int, request: Request) -> dict[str, Any]:
        auth(request)
        check_project(project_id)
        _job_row(store, job_id)
        return {"success": True, "proposedChanges": job_proposals(store, job_id, records=False)}

    @app.get("/v1/api/{project_id}/raw-data/{sample_id}", tags=["raw-data"])
    def get_sample(project_id: int, sample_id: int, request: Request, proposedActionsJobId: int | None = None,
                   limitPayloadValues: int | None = None) -> dict[str, Any]:
        a = auth(request)
        check_project(project_id)
        s = sample_of(a, sample_id, proposedActionsJobId)
        values: list[list[float]] = []
        if s.is_audio and limitPayloadValues != 0:
            audio, _ = _stored_audio(store.blob_path(s).read_bytes(), mono=True)
            if limitPayloadValues is not None:
                audio = audio[:limitPayloadValues]
            values = [[float(v)] for v in audio]
        payload = payload_json(s, values)
        return {"success": True, "sample": sample_json(s, project_id), "payload": payload,
                "totalPayloadLength": int(s.values_count or 1),
                "datastreamPayloads": [{"index": 0, "payload": payload, "totalPayloadLength": int(s.values_count or 1)}]}

    @app.get("/v1/api/{project_id}/raw-data/{sample_id}/image", tags=["raw-data"])
    def get_image(project_id: int, sample_id: int, request: Request) -> Response:
        auth(request)
        check_project(project_id)
        s = store.get_sample(sample_id)
        if s.width is None:
            raise ApiError(400, f"sample {sample_id} is not an image: use /wav or /raw")
        return Response(store.blob_path(s).read_bytes(), media_type=s.media_type or "application/octet-stream")

    @app.get("/v1/api/{project_id}/raw-data/{sample_id}/wav", tags=["raw-data"])
    def get_wav(project_id: int, sample_id: int, request: Request, axisIx: int = 0,
                sliceStart: int | None = None, sliceEnd: int | None = None) -> Response:
        auth(request)
        check_project(project_id)
        s = store.get_sample(sample_id)
        if not s.is_audio:
            raise ApiError(400, f"sample {sample_id} is not audio: use /image or /raw")
        if axisIx != 0:
            raise ApiError(400, f"axisIx: sample {sample_id} has one axis (0), got {axisIx}")
        data = store.blob_path(s).read_bytes()
        if s.media_type != "audio/wav" or sliceStart is not None or sliceEnd is not None:
            data = _wav(data, sliceStart, sliceEnd)
        return Response(data, media_type="audio/wav")

    @app.get("/v1/api/{project_id}/raw-data/{sample_id}/raw", tags=["raw-data"])
    def get_raw(project_id: int, sample_id: int, request: Request) -> Response:
        auth(request)
        check_project(project_id)
        s = store.get_sample(sample_id)
        return Response(store.blob_path(s).read_bytes(), media_type=s.media_type or "application/octet-stream",
                        headers={"content-disposition": f"attachment; filename*=UTF-8''{urllib.parse.quote(s.filename)}"})

    # --- raw data: writing -------------------------------------------------------------------

    @app.post("/v1/api/{project_id}/raw-data/{sample_id}/bounding-boxes", tags=["raw-data"])
    async def set_boxes(project_id: int, sample_id: int, request: Request) -> JSONResponse:
        a = auth(request)
        check_project(project_id)
        boxes = parse_boxes((await body(request)).get("boundingBoxes"), "boundingBoxes")
        return write(a, sample_id, SampleChange(bounding_boxes=boxes),
                     lambda: store.set_bounding_boxes(sample_id, boxes))

    @app.post("/v1/api/{project_id}/raw-data/{sample_id}/structured-labels", tags=["raw-data"])
    async def set_structured(project_id: int, sample_id: int, request: Request) -> JSONResponse:
        a = auth(request)
        check_project(project_id)
        labels = parse_structured_labels((await body(request)).get("structuredLabels"), "structuredLabels")
        return write(a, sample_id, SampleChange(structured_labels=labels),
                     lambda: store.set_structured_labels(sample_id, labels))

    @app.post("/v1/api/{project_id}/raw-data/{sample_id}/edit-label", tags=["raw-data"])
    async def edit_label(project_id: int, sample_id: int, request: Request) -> JSONResponse:
        a = auth(request)
        check_project(project_id)
        label = (await body(request)).get("label")
        if label is not None and not isinstance(label, str):
            raise ApiError(400, f"label: expected a string, got {type(label).__name__}")
        return write(a, sample_id, SampleChange(label=label or ""), lambda: store.set_label(sample_id, label or None))

    @app.post("/v1/api/{project_id}/raw-data/{sample_id}/metadata", tags=["raw-data"])
    async def set_metadata(project_id: int, sample_id: int, request: Request) -> JSONResponse:
        a = auth(request)
        check_project(project_id)
        md = parse_change({"metadata": (await body(request)).get("metadata") or {}}, "metadata").metadata or {}
        if a.scope is not None:
            # the protocol adds or updates keys; a change's metadata replaces the whole: start from
            # the sample as this step has it so far (earlier steps and this step's own writes)
            [cur] = overlay(store, a.scope.job_id, [store.get_sample(sample_id)], a.scope.step)
            return write(a, sample_id, SampleChange(metadata={**cur.metadata, **md}), lambda: None)
        store.update_metadata([sample_id], md)
        return JSONResponse({"success": True})

    def set_disabled(project_id: int, sample_id: int, request: Request, disabled: bool) -> JSONResponse:
        a = auth(request)
        check_project(project_id)
        return write(a, sample_id, SampleChange(is_disabled=disabled),
                     lambda: store.set_disabled([sample_id], disabled))

    @app.post("/v1/api/{project_id}/raw-data/{sample_id}/disable", tags=["raw-data"])
    def disable(project_id: int, sample_id: int, request: Request) -> JSONResponse:
        return set_disabled(project_id, sample_id, request, True)

    @app.post("/v1/api/{project_id}/raw-data/{sample_id}/enable", tags=["raw-data"])
    def enable(project_id: int, sample_id: int, request: Request) -> JSONResponse:
        return set_disabled(project_id, sample_id, request, False)

    @app.post("/v1/api/{project_id}/raw-data/{sample_id}/propose-changes", tags=["raw-data"])
    async def propose(project_id: int, sample_id: int, request: Request) -> JSONResponse:
        a = auth(request)
        check_project(project_id)
        data = await body(request)
        job_id = data.get("jobId")
        if not isinstance(job_id, int) or isinstance(job_id, bool):
            raise ApiError(400, f"jobId: expected the integer job id (--propose-actions), got {job_id!r}")
        change = parse_change(data.get("proposedChanges"), "proposedChanges")
        store.get_sample(sample_id)
        if a.scope is not None:
            if job_id != a.scope.job_id:
                raise ApiError(403, f"this key belongs to job {a.scope.job_id}, not job {job_id}")
            _stage(state, a.scope, sample_id, change, merge=False)
        else:
            stage_proposal(store, job_id, sample_id, _step_for(store, job_id, sample_id), change)
        return JSONResponse({"success": True})

    # --- ingestion ---------------------------------------------------------------------------

    @app.post("/api/{category}/files", tags=["ingestion"])
    async def ingest(category: str, request: Request) -> JSONResponse:
        if auth(request).scope is not None:
            raise ApiError(403, "a job's key cannot upload samples: an action's results are proposals, applied after review")
        from .ingestion import ingest_request

        return await ingest_request(state, category, request)

    return app


def _overlay_step(a: _Auth, job_id: int) -> int | None:
    """The last step whose proposals a reader sees: a job key of step k sees steps < k."""
    if a.scope is not None and a.scope.job_id == job_id:
        return a.scope.step - 1
    return None


def _stage(state: ServerState, scope: JobScope, sample_id: int, change: SampleChange, merge: bool) -> None:
    if sample_id not in scope.sample_ids:
        raise ApiError(403, f"sample {sample_id} is not part of job {scope.job_id}'s step {scope.step}")
    stage_proposal(state.store, scope.job_id, sample_id, scope.step, change, merge=merge,
                   revision=scope.revisions.get(sample_id))
    scope.proposed.add(sample_id)


def _job_row(store: Store, job_id: int) -> Any:
    from sqlalchemy import select

    from ..store.schema import jobs

    with store.engine.connect() as conn:
        row = conn.execute(select(jobs.c.definition, jobs.c.sample_ids).where(jobs.c.id == job_id)).first()
    if row is None:
        raise NotFound(f"no job {job_id}")
    return row


def _step_for(store: Store, job_id: int, sample_id: int) -> int:
    """Where a proposal posted with a project key goes: the job's last step (its changes win
    when the job is applied). The sample must be one of the job's."""
    from ..store.schema import unpack_ids

    row = _job_row(store, job_id)
    if sample_id not in set(unpack_ids(row.sample_ids)):
        raise ApiError(400, f"sample {sample_id} is not part of job {job_id}")
    return max(1, len(json.loads(row.definition).get("steps", [])))


def _list_filter(category: str, labels: str | None, search: str | None, include_disabled: str | None,
                 data_type: str | None, min_id: int | None, max_id: int | None, metadata: str | None) -> SampleFilter:
    f = SampleFilter()
    if category not in ("all", *CATEGORIES):
        raise ApiError(400, f"category: expected one of all, {', '.join(CATEGORIES)}, got {category!r}")
    if category != "all":
        f.categories = [category]
    if labels:
        try:
            lab = json.loads(labels)
        except json.JSONDecodeError:
            raise ApiError(400, f"labels: expected a JSON list of strings, got {labels!r}") from None
        if not isinstance(lab, list) or not all(isinstance(x, str) for x in lab):
            raise ApiError(400, f"labels: expected a JSON list of strings, got {labels!r}")
        f.labels = lab
    f.search = search or None
    mode = (include_disabled or "both").lower()
    if mode in ("both", "true", "1"):
        f.include_disabled = True
    elif mode in ("enabled", "false", "0"):
        f.include_disabled = False
    elif mode == "disabled":
        f.disabled_only = True
    else:
        raise ApiError(400, f"includeDisabled: expected both, enabled or disabled, got {include_disabled!r}")
    if data_type:
        if data_type not in ("audio", "image"):
            raise ApiError(400, f"dataType: expected audio or image, got {data_type!r}")
        f.data_type = data_type  # type: ignore[assignment]
    f.min_id = min_id
    f.max_id = max_id - 1 if max_id is not None else None  # the protocol's maxId is exclusive
    if metadata:
        try:
            f.metadata, f.no_metadata, f.combinator = parse_metadata_json(metadata)
        except InvalidInput as e:
            raise ApiError(400, str(e)) from None
    return f


def _stored_audio(data: bytes, mono: bool) -> tuple[Any, int]:
    from ..media import read_audio

    try:
        return read_audio(data, mono=mono)
    except ValueError as e:  # the file went bad on disk after upload (uploads refuse corrupt audio)
        raise ApiError(500, f"the stored audio cannot be read: {e}") from None


def _wav(data: bytes, start: int | None, end: int | None) -> bytes:
    import soundfile as sf

    audio, rate = _stored_audio(data, mono=False)
    audio = audio[start or 0 : end]
    out = io.BytesIO()
    sf.write(out, audio, rate, format="WAV", subtype="PCM_16")
    return out.getvalue()



def app_from_env() -> FastAPI:
    """The app factory of `labelblocks serve --workers N` (each worker process calls it)."""
    import os

    upload, file = (int(x) for x in os.environ["LABELBLOCKS_SERVE_LIMITS"].split(","))
    return create_app(os.environ["LABELBLOCKS_SERVE_PROJECT"], limits=Limits(upload_bytes=upload, file_bytes=file))
