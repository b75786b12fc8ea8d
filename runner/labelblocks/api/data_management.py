"""The protocol's data-management routes that pipelines and its official clients use beside
listing and labeling: counting a filtered selection, every sample's metadata, deleting,
renaming and moving one sample, and the batch writes over the listing's filters (each one
transaction). A job's key may not use the writing ones: a block's writes are staged as its
step's proposals, and these have no proposal form."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse

from ..errors import InvalidInput
from ..filters import SampleFilter
from ..model import CATEGORIES, MAX_INT, parse_json
from .raw_data import list_filter
from .state import (
    ApiError,
    Auth,
    DeletesSamples,
    MovesSamples,
    OptionalQueryInt,
    ProjectId,
    RenamesSamples,
    SampleId,
    State,
    WritesInBatches,
    json_body,
)

router = APIRouter(prefix="/v1/api/{project_id}/raw-data", tags=["raw-data"])
_PAGE = 1000


def _category(value: Any, name: str) -> str:
    """A category given in a request (400 for anything else)."""
    if value not in CATEGORIES:
        raise ApiError(400, f"{name}: expected one of {', '.join(CATEGORIES)}, got {value!r}")
    return str(value)


@router.get("/count")
def count_samples(project_id: ProjectId, state: State, a: Auth, category: str = "all", labels: str | None = None,
                  filename: str | None = None, search: str | None = None, includeDisabled: str | None = None,
                  dataType: str | None = None, minId: OptionalQueryInt = None, maxId: OptionalQueryInt = None,
                  metadata: str | None = None) -> dict[str, Any]:
    """How many samples the listing's filters select (metadata filter included)."""
    f = list_filter(category, labels, filename or search, includeDisabled, dataType, minId, maxId, metadata)
    if a.scope is not None:
        f.ids = sorted(a.scope.sample_ids)
    return {"success": True, "count": state.store.count(f)}


@router.get("/metadata")
def samples_metadata(project_id: ProjectId, state: State, a: Auth, category: str = "all") -> dict[str, Any]:
    """Every sample's id and metadata (those with metadata), in the category."""
    f = list_filter(category, None, None, None, None, None, None, None)
    if a.scope is not None:
        f.ids = sorted(a.scope.sample_ids)
    out: list[dict[str, Any]] = []
    offset = 0
    while page := state.store.list_samples(f, limit=_PAGE, offset=offset):
        offset += len(page)
        out += [{"id": s.id, "metadata": s.metadata} for s in page if s.metadata]
    return {"success": True, "metadata": out}


@router.get("/ratio")
def dataset_ratio(project_id: ProjectId, state: State, a: Auth) -> dict[str, Any]:
    """How many samples each category holds."""
    ids = sorted(a.scope.sample_ids) if a.scope is not None else None
    return {"success": True, "ratio": {c: state.store.count(SampleFilter(categories=[c], ids=ids))
                                       for c in CATEGORIES}}


@router.get("/metadata-filter-options")
def metadata_filter_options(project_id: ProjectId, state: State, a: Auth, category: str = "all",
                            limit: OptionalQueryInt = None, offset: OptionalQueryInt = None) -> dict[str, Any]:
    """The metadata keys of the category's samples, each with its values: what a listing's
    metadata filter can ask for."""
    f = list_filter(category, None, None, None, None, None, None, None)
    if a.scope is not None:
        f.ids = sorted(a.scope.sample_ids)
    options = state.store.metadata_options(f)
    start = offset or 0
    page = options[start : start + limit] if limit is not None else options[start:]
    return {"success": True, "totalCount": len(options), "count": len(page),
            "optionsList": [{"key": k, "options": values} for k, values in page]}


@router.post("/delete-all")
def delete_all(project_id: ProjectId, state: State, a: DeletesSamples) -> dict[str, Any]:
    """Delete every sample of the project (one transaction)."""
    return {"success": True, "samples": state.store.delete_samples(state.store.select_ids(SampleFilter()))}


@router.post("/delete-all/{category}")
def delete_all_in_category(project_id: ProjectId, category: str, state: State, a: DeletesSamples) -> dict[str, Any]:
    """Delete every sample of a category (one transaction)."""
    ids = state.store.select_ids(SampleFilter(categories=[_category(category, "category")]))
    return {"success": True, "samples": state.store.delete_samples(ids)}


@router.delete("/{sample_id}")
def delete_sample(project_id: ProjectId, sample_id: SampleId, state: State, a: DeletesSamples) -> JSONResponse:
    state.store.delete_samples([sample_id])
    return JSONResponse({"success": True})


@router.post("/{sample_id}/rename")
async def rename_sample(project_id: ProjectId, sample_id: SampleId, request: Request, state: State,
                        a: RenamesSamples) -> JSONResponse:
    body = await json_body(request)
    name = body.get("name")
    if not isinstance(name, str):
        raise ApiError(400, "name: expected the sample's new name")
    state.store.rename_sample(sample_id, name)
    return JSONResponse({"success": True})


@router.post("/{sample_id}/move")
async def move_sample(project_id: ProjectId, sample_id: SampleId, request: Request, state: State,
                      a: MovesSamples) -> JSONResponse:
    body = await json_body(request)
    category = _category(body.get("newCategory"), "newCategory")
    state.store.get_sample(sample_id)  # 404 for an unknown sample
    state.store.set_categories({sample_id: category})
    return JSONResponse({"success": True})


# --- batch writes over the listing's filters --------------------------------------------------------


def _ids_param(text: str | None, name: str) -> list[int] | None:
    if text is None:
        return None
    try:
        data = parse_json(text, name, "a JSON list of sample ids")
    except InvalidInput as e:
        raise ApiError(400, str(e)) from None
    if not isinstance(data, list) or not all(isinstance(i, int) and not isinstance(i, bool) and 0 <= i <= MAX_INT
                                             for i in data):
        raise ApiError(400, f"{name}: expected a JSON list of sample ids")
    return data


def batch_ids(request: Request, state: State, a: WritesInBatches) -> list[int]:
    """The ids the batch route's query selects (the listing's filters, ``ids``, ``excludeIds``)."""
    q = request.query_params
    try:
        min_id = int(q["minId"]) if "minId" in q else None
        max_id = int(q["maxId"]) if "maxId" in q else None
    except ValueError:
        raise ApiError(400, "minId and maxId: expected integers") from None
    if any(v is not None and not 0 <= v <= MAX_INT for v in (min_id, max_id)):
        raise ApiError(400, f"minId and maxId: expected 0 to {MAX_INT}")
    f = list_filter(q.get("category", "all"), q.get("labels"), q.get("filename") or q.get("search"),
                    q.get("includeDisabled"), q.get("dataType"), min_id, max_id, q.get("metadata"))
    f.ids = _ids_param(q.get("ids"), "ids")
    exclude = set(_ids_param(q.get("excludeIds"), "excludeIds") or ())
    return [i for i in state.store.select_ids(f) if i not in exclude]


BatchIds = Annotated[list[int], Depends(batch_ids)]


def _done(n: int) -> dict[str, Any]:
    return {"success": True, "samples": n}


@router.post("/batch/add-metadata")
async def batch_add_metadata(project_id: ProjectId, request: Request, state: State, ids: BatchIds) -> dict[str, Any]:
    body = await json_body(request)
    key, value = body.get("metadataKey"), body.get("metadataValue")
    if not isinstance(key, str) or not key or not isinstance(value, str):
        raise ApiError(400, "expected {metadataKey, metadataValue} (strings)")
    return _done(state.store.update_metadata(ids, {key: value}))


@router.post("/batch/clear-metadata-by-key")
async def batch_clear_metadata_by_key(project_id: ProjectId, request: Request, state: State,
                                      ids: BatchIds) -> dict[str, Any]:
    key = (await json_body(request)).get("metadataKey")
    if not isinstance(key, str) or not key:
        raise ApiError(400, "metadataKey: expected the key to remove")
    return _done(state.store.update_metadata(ids, unset_keys=[key]))


@router.post("/batch/clear-metadata")
def batch_clear_metadata(project_id: ProjectId, state: State, ids: BatchIds) -> dict[str, Any]:
    return _done(state.store.clear_metadata(ids))


@router.post("/batch/disable-samples")
def batch_disable(project_id: ProjectId, state: State, ids: BatchIds) -> dict[str, Any]:
    return _done(state.store.set_disabled(ids, True))


@router.post("/batch/enable-samples")
def batch_enable(project_id: ProjectId, state: State, ids: BatchIds) -> dict[str, Any]:
    return _done(state.store.set_disabled(ids, False))


@router.post("/batch/delete")
def batch_delete(project_id: ProjectId, state: State, ids: BatchIds) -> dict[str, Any]:
    return _done(state.store.delete_samples(ids))


@router.post("/batch/edit-labels")
async def batch_edit_labels(project_id: ProjectId, request: Request, state: State, ids: BatchIds) -> dict[str, Any]:
    label = (await json_body(request)).get("label")
    if not isinstance(label, str) or not label:
        raise ApiError(400, "label: expected the new label")
    return _done(state.store.set_labels(ids, label))


@router.post("/batch/moveSamples")
async def batch_move(project_id: ProjectId, request: Request, state: State, ids: BatchIds) -> dict[str, Any]:
    category = _category((await json_body(request)).get("newCategory"), "newCategory")
    return _done(state.store.set_categories(dict.fromkeys(ids, category)))
