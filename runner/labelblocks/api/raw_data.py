"""The protocol's raw-data endpoints: listing and reading samples, and a block's writes.

A job key cannot change the dataset: its writes (bounding-boxes, edit-label, metadata, ...)
are staged as its step's proposal. Listing ``category=training`` with it includes validation
samples, because published blocks find their samples by paging training, then testing.
"""

from __future__ import annotations

import json
import secrets as pysecrets
from collections.abc import Callable, Iterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from ..errors import InvalidInput
from ..filters import SampleFilter, parse_metadata_json
from ..model import CATEGORIES, Sample, SampleChange, parse_boxes, parse_change, parse_json, parse_structured_labels
from ..store.proposals import overlay
from .media import audio_values_json, stored_audio_header
from .proposals import overlay_step, stage
from .protocol import payload_json, sample_json
from .state import (
    ApiError,
    Auth,
    Caller,
    OptionalQueryInt,
    ProjectId,
    QueryInt,
    SampleId,
    ServerState,
    State,
    json_body,
)

router = APIRouter(prefix="/v1/api/{project_id}/raw-data", tags=["raw-data"])


# --- reading ----------------------------------------------------------------------------------------


@router.get("")
def list_samples(project_id: ProjectId, state: State, a: Auth, category: str = "all", limit: QueryInt = 20,
                 offset: QueryInt = 0, labels: str | None = None, filename: str | None = None,
                 search: str | None = None, includeDisabled: str | None = None,
                 proposedActionsJobId: OptionalQueryInt = None, sortBy: str | None = None,
                 dataType: str | None = None, minId: OptionalQueryInt = None, maxId: OptionalQueryInt = None,
                 metadata: str | None = None) -> dict[str, Any]:
    store = state.store
    f = list_filter(category, labels, filename or search, includeDisabled, dataType, minId, maxId, metadata)
    if a.scope is not None:
        # a job key lists its job's samples only
        f.ids = sorted(a.scope.sample_ids)
        if f.categories == ["training"]:
            # published blocks find their samples by paging training, then testing: a job's
            # validation samples (from `labelblocks split`) must not be skipped silently
            f.categories = ["training", "validation"]
    if proposedActionsJobId is not None:
        a.check_job(proposedActionsJobId)
    limit = min(limit, state.limits.page)
    desc = (sortBy or "id-desc") == "id-desc"
    if sortBy not in (None, "id-desc", "id-asc"):
        raise ApiError(400, f"sortBy: expected id-asc or id-desc, got {sortBy!r}")
    page = store.list_samples(f, limit=limit, offset=offset, descending=desc)
    if proposedActionsJobId is not None:
        page = overlay(store, proposedActionsJobId, page, overlay_step(a, proposedActionsJobId))
    elif a.scope is not None:  # a job's block sees the samples without its action's earlier contributions
        page = overlay(store, a.scope.job_id, page, 0)
    return {"success": True, "samples": [sample_json(s, project_id) for s in page], "totalCount": store.count(f)}


@router.get("/{sample_id}")
def get_sample(project_id: ProjectId, sample_id: SampleId, state: State, a: Auth,
               proposedActionsJobId: OptionalQueryInt = None, limitPayloadValues: OptionalQueryInt = None) -> Response:
    """A sample with its payload: an audio sample's values (mono), at most ``limitPayloadValues``
    and never more than the server's limit (``totalPayloadLength`` says how many there are),
    streamed as they are decoded."""
    s = _sample_of(state, a, sample_id, proposedActionsJobId)
    total = int(s.values_count or 1)
    n = 0
    if s.is_audio:
        n = min(total, state.limits.payload_values if limitPayloadValues is None else limitPayloadValues,
                state.limits.payload_values)
    marker = pysecrets.token_hex(16)  # where the values go: no stored text can guess it
    payload = payload_json(s, marker)  # type: ignore[arg-type]
    doc = {"success": True, "sample": sample_json(s, project_id), "payload": payload, "totalPayloadLength": total,
           "datastreamPayloads": [{"index": 0, "payload": payload, "totalPayloadLength": total}]}
    parts = json.dumps(doc, ensure_ascii=False, allow_nan=False, separators=(",", ":")).split(f'"{marker}"')
    if n == 0:
        return Response("[]".join(parts), media_type="application/json")
    path = state.store.blob_path(s)
    stored_audio_header(path)  # a file gone bad is a clean error before the answer starts

    def stream() -> Iterator[bytes]:
        for i, part in enumerate(parts):
            if i:
                yield from audio_values_json(path, n)
            yield part.encode("utf-8")

    return StreamingResponse(stream(), media_type="application/json")


def _sample_of(state: ServerState, a: Caller, sample_id: SampleId, job_id: int | None = None) -> Sample:
    a.check_sample(sample_id)
    if job_id is not None:
        a.check_job(job_id)
    s = state.store.get_sample(sample_id)
    if job_id is not None:
        [s] = overlay(state.store, job_id, [s], overlay_step(a, job_id))
    elif a.scope is not None:  # a job's block sees the sample without its action's earlier contributions
        [s] = overlay(state.store, a.scope.job_id, [s], 0)
    return s


# --- writing ----------------------------------------------------------------------------------------


def _write(state: ServerState, a: Caller, sample_id: SampleId, change: SampleChange,
           direct: Callable[[], Any]) -> JSONResponse:
    """A write from a block: staged as the step's proposal under a job key, else applied."""
    a.check_sample(sample_id)
    if a.scope is not None:
        stage(state, a.scope, sample_id, change, merge=True)
    else:
        direct()
    return JSONResponse({"success": True})


@router.post("/{sample_id}/bounding-boxes")
async def set_boxes(project_id: ProjectId, sample_id: SampleId, request: Request, state: State, a: Auth) -> JSONResponse:
    boxes = parse_boxes((await json_body(request)).get("boundingBoxes"), "boundingBoxes")
    return _write(state, a, sample_id, SampleChange(bounding_boxes=boxes),
                  lambda: state.store.set_bounding_boxes(sample_id, boxes))


@router.post("/{sample_id}/structured-labels")
async def set_structured(project_id: ProjectId, sample_id: SampleId, request: Request, state: State,
                         a: Auth) -> JSONResponse:
    labels = parse_structured_labels((await json_body(request)).get("structuredLabels"), "structuredLabels")
    return _write(state, a, sample_id, SampleChange(structured_labels=labels),
                  lambda: state.store.set_structured_labels(sample_id, labels))


@router.post("/{sample_id}/edit-label")
async def edit_label(project_id: ProjectId, sample_id: SampleId, request: Request, state: State, a: Auth) -> JSONResponse:
    label = (await json_body(request)).get("label")
    if label is not None and not isinstance(label, str):
        raise ApiError(400, f"label: expected a string, got {type(label).__name__}")
    return _write(state, a, sample_id, SampleChange(label=label or ""),
                  lambda: state.store.set_label(sample_id, label or None))


@router.post("/{sample_id}/metadata")
async def set_metadata(project_id: ProjectId, sample_id: SampleId, request: Request, state: State,
                       a: Auth) -> JSONResponse:
    md = parse_change({"metadata": (await json_body(request)).get("metadata") or {}}, "metadata").metadata or {}
    a.check_sample(sample_id)
    if a.scope is not None:
        # the protocol adds or updates keys; a change's metadata replaces the whole: start from
        # the sample as this step has it so far (earlier steps and this step's own writes)
        [cur] = overlay(state.store, a.scope.job_id, [state.store.get_sample(sample_id)], a.scope.step)
        return _write(state, a, sample_id, SampleChange(metadata={**cur.metadata, **md}), lambda: None)
    state.store.update_metadata([sample_id], md)
    return JSONResponse({"success": True})


@router.post("/{sample_id}/disable")
def disable(project_id: ProjectId, sample_id: SampleId, state: State, a: Auth) -> JSONResponse:
    return _write(state, a, sample_id, SampleChange(is_disabled=True),
                  lambda: state.store.set_disabled([sample_id], True))


@router.post("/{sample_id}/enable")
def enable(project_id: ProjectId, sample_id: SampleId, state: State, a: Auth) -> JSONResponse:
    return _write(state, a, sample_id, SampleChange(is_disabled=False),
                  lambda: state.store.set_disabled([sample_id], False))


def list_filter(category: str, labels: str | None, search: str | None, include_disabled: str | None,
                data_type: str | None, min_id: int | None, max_id: int | None, metadata: str | None) -> SampleFilter:
    """The listing's query parameters as a filter (400 for a bad one)."""
    f = SampleFilter()
    if category not in ("all", *CATEGORIES):
        raise ApiError(400, f"category: expected one of all, {', '.join(CATEGORIES)}, got {category!r}")
    if category != "all":
        f.categories = [category]
    if labels:
        try:
            lab = parse_json(labels, "labels", "a JSON list of strings")
        except InvalidInput as e:
            raise ApiError(400, str(e)) from None
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
