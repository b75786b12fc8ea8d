"""Inference: published actions answer images over HTTP, in the Roboflow inference server's
API (what ``inference_sdk.InferenceHTTPClient`` speaks to a self-hosted server) and in
labelblocks' own vocabulary; custom metadata on logged inferences, and their stats.

Keys: a project key, in the JSON body's ``api_key``, the ``api_key`` query parameter (the
Roboflow clients send it there), ``x-api-key`` or ``Authorization: Bearer``. Job keys are
refused. Errors: ``{"success": false, "error": ..., "message": ...}`` with a 4xx status;
nothing is logged for a refused request.
"""

from __future__ import annotations

import base64
import binascii
import time
from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from ...api.state import ServerState, get_state, json_object
from ...errors import InvalidInput, LabelblocksError, NotFound
from ...inference import CLASSIFICATION, OBJECT_DETECTION, ModelPool, parse_model_id
from ...store import inferences as log_store
from ...store.keys import verify_key

router = APIRouter(tags=["inference"])


class Refused(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


def refused(e: Exception) -> JSONResponse:
    """The error answer of a refused request: its own status, 404 for what does not exist,
    400 for any other bad input."""
    if not isinstance(e, Refused):
        e = Refused(404 if isinstance(e, NotFound) else 400, str(e))
    return JSONResponse({"success": False, "error": e.message, "message": e.message}, status_code=e.status)


def pool(request: Request) -> ModelPool:
    found: ModelPool | None = getattr(request.app.state, "inference", None)
    if found is None:
        state = get_state(request)
        found = ModelPool(state.store, state.limits.max_models, state.limits.max_batch_delay_ms / 1000,
                          state.limits.keep_images, state.limits.max_pixels)
        request.app.state.inference = found
    return found


def key_id(request: Request, state: ServerState, body: dict[str, Any] | None = None) -> int:
    """The id of the project key the request carries (401 without a valid one)."""
    auth = request.headers.get("authorization", "")
    key = ((body or {}).get("api_key") or request.query_params.get("api_key") or request.headers.get("x-api-key")
           or (auth[7:] if auth.lower().startswith("bearer ") else None))
    record = verify_key(state.store, str(key)) if key else None
    if record is None:
        raise Refused(401, "missing or invalid API key: pass a project key (`labelblocks keys create`) as api_key")
    return record.id


async def json_body(request: Request) -> dict[str, Any]:
    """The request's JSON object body, refused in the inference server's shape (400)."""
    try:
        return json_object(await request.body())
    except InvalidInput as e:
        raise Refused(400, str(e)) from None


def decode_images(value: Any) -> tuple[list[bytes], bool]:
    """The request's images ({type: base64, value} or a list of them); (images, was a list)."""
    items = value if isinstance(value, list) else [value]
    if not items or value is None:
        raise Refused(400, "image: expected {\"type\": \"base64\", \"value\": \"...\"} (or a list of them)")
    out = []
    for i, item in enumerate(items):
        if not isinstance(item, dict) or item.get("type") != "base64" or not isinstance(item.get("value"), str):
            kind = item.get("type") if isinstance(item, dict) else type(item).__name__
            raise Refused(400, f"image {i}: only base64 images are taken (type \"base64\"), got {kind!r}")
        try:
            out.append(base64.b64decode(item["value"], validate=True))
        except (binascii.Error, ValueError):
            raise Refused(400, f"image {i}: its value is not base64") from None
    return out, isinstance(value, list)


async def _infer(request: Request, task: str) -> Any:
    state = get_state(request)
    try:
        if request.headers.get("content-type", "").startswith("multipart/form-data"):
            form = await request.form()
            body: dict[str, Any] = {k: v for k, v in form.items() if isinstance(v, str)}
            files = [await f.read() for k, f in form.multi_items() if not isinstance(f, str)]
            if not files:
                raise Refused(400, "multipart: expected the image as a file field")
            images, many = files, len(files) > 1
        else:
            body = await json_body(request)
            images, many = decode_images(body.get("image"))
        who = key_id(request, state, body)
        model_id = body.get("model_id")
        if not model_id:
            raise Refused(400, "model_id: expected ACTION/VERSION (see GET /model/registry)")
        parse_model_id(model_id)
        models = pool(request)
        model = await run_in_threadpool(models.get, model_id)
        results = await run_in_threadpool(models.infer, model, images, who)
    except (Refused, LabelblocksError) as e:
        return refused(e)
    answers = [model.answer(r, task) if r.error is None else {"inference_id": r.inference_id, "error": r.error}
               for r in results]
    return answers if many else answers[0]


@router.post("/infer/object_detection")
async def infer_object_detection(request: Request) -> Any:
    return await _infer(request, OBJECT_DETECTION)


@router.post("/infer/classification")
async def infer_classification(request: Request) -> Any:
    return await _infer(request, CLASSIFICATION)


@router.get("/model/registry")
async def model_registry(request: Request) -> Any:
    try:
        key_id(request, get_state(request))
    except Refused as e:
        return refused(e)
    return {"models": pool(request).registry()}


@router.post("/model/add")
async def model_add(request: Request) -> Any:
    try:
        body = await json_body(request)
        key_id(request, get_state(request), body)
        parse_model_id(body.get("model_id") or "")
        await run_in_threadpool(pool(request).get, body["model_id"])
    except (Refused, LabelblocksError) as e:
        return refused(e)
    return {"models": pool(request).registry()}


@router.post("/model/remove")
async def model_remove(request: Request) -> Any:
    try:
        body = await json_body(request)
        key_id(request, get_state(request), body)
        model_id = body.get("model_id") or ""
        parse_model_id(model_id)
        pool(request).remove(model_id)
    except (Refused, LabelblocksError) as e:
        return refused(e)
    return {"models": pool(request).registry()}


@router.post("/v1/api/{project_id}/infer/{action}")
async def infer_native(request: Request, project_id: int, action: str) -> Any:
    """An image (JSON ``{"image": BASE64}``, or the image's bytes as the body) through the
    latest version of ``action`` (or ``?version=N``): ``{success, inferenceId, model, change,
    predictions}`` with the change in the protocol's shape (boxes with scores)."""
    state = get_state(request)
    try:
        if project_id != state.project.id:
            raise Refused(404, f"no project {project_id}: this server serves project {state.project.id}")
        if request.headers.get("content-type", "").startswith("application/json"):
            body = await json_body(request)
            who = key_id(request, state, body)
            images, _ = decode_images({"type": "base64", "value": body.get("image")}
                                      if isinstance(body.get("image"), str) else body.get("image"))
        else:
            who = key_id(request, state)
            images = [await request.body()]
        version = request.query_params.get("version")
        model_id = f"{action}/{version}" if version else action
        models = pool(request)
        model = await run_in_threadpool(models.get, model_id)
        [r] = await run_in_threadpool(models.infer, model, images[:1], who)
    except (Refused, LabelblocksError) as e:
        return refused(e)
    if r.error is not None:
        return JSONResponse({"success": False, "error": r.error, "inferenceId": r.inference_id}, status_code=422)
    return {"success": True, "inferenceId": r.inference_id, "model": model.model_id,
            "change": r.change.model_dump(by_alias=True, exclude_none=True, mode="json") if r.change else {},
            "predictions": [{"class": c, "confidence": conf} for c, conf in r.classes()],
            "latencyMs": r.latency_ms}


def _workspace(state: ServerState, workspace: str) -> None:
    if workspace not in (state.project.name, str(state.project.id)):
        raise Refused(404, f"no workspace {workspace!r}: this server serves {state.project.name!r} (or its id "
                           f"{state.project.id})")


@router.post("/{workspace}/inference-stats/metadata")
async def inference_metadata(request: Request, workspace: str) -> Any:
    """``{"api_key"?: ..., "data": [{"inference_ids": [...], "field_name": ..., "field_value":
    ...}]}``: all of it or nothing; unknown inference ids are listed in a 400."""
    state = get_state(request)
    try:
        body = await json_body(request)
        key_id(request, state, body)
        _workspace(state, workspace)
        data = body.get("data")
        if not isinstance(data, list) or not data:
            raise Refused(400, "data: expected a list of {inference_ids, field_name, field_value}")
        items = []
        for i, d in enumerate(data):
            ids, name, value = (d.get("inference_ids"), d.get("field_name"), d.get("field_value")) \
                if isinstance(d, dict) else (None, None, None)
            if not isinstance(ids, list) or not ids or not all(isinstance(x, str) for x in ids):
                raise Refused(400, f"data[{i}].inference_ids: expected a list of inference ids")
            if not isinstance(name, str) or not name.strip():
                raise Refused(400, f"data[{i}].field_name: expected a name")
            if not isinstance(value, str | int | float) or isinstance(value, bool):
                raise Refused(400, f"data[{i}].field_value: expected a text")
            items.append((ids, name, str(value)))
        await run_in_threadpool(log_store.tag, state.store, items)
    except (Refused, LabelblocksError) as e:
        return refused(e)
    return {"status": "ok"}


def _when(value: str | None, default: float) -> float:
    if not value:
        return default
    try:
        return float(value)
    except ValueError:
        pass
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        raise Refused(400, f"expected a time as ISO 8601 or seconds since 1970, got {value!r}") from None


@router.get("/{workspace}/inference-stats")
async def inference_stats(request: Request, workspace: str) -> Any:
    """Totals of ``[startTime, endTime)`` (default: the last 24 hours) and of the period
    before, per model and predicted class; ``groupBy=FIELD`` adds them per custom metadata
    value; ``modelNames=a/1,b/2`` limits the models."""
    from ...inference import stats

    state = get_state(request)
    q = request.query_params
    try:
        key_id(request, state)
        _workspace(state, workspace)
        end = _when(q.get("endTime"), time.time())
        start = _when(q.get("startTime"), end - 86400)
        if end <= start:
            raise Refused(400, "endTime must be after startTime")
        models = [m for m in (q.get("modelNames") or "").split(",") if m]
        rows = log_store.list_inferences(state.store, since=start, until=end)
        prev = log_store.list_inferences(state.store, since=start - (end - start), until=start)
        if models:
            rows = [r for r in rows if r.model in models]
            prev = [r for r in prev if r.model in models]
    except Refused as e:
        return refused(e)
    out = stats(rows, prev, q.get("groupBy"))
    return {**out, "start_time": datetime.fromtimestamp(start, tz=UTC).isoformat(),
            "end_time": datetime.fromtimestamp(end, tz=UTC).isoformat()}
