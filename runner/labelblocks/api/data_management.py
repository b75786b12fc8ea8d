"""The protocol's data-management routes that pipelines and its official clients use beside
listing and labeling: counting a filtered selection, every sample's metadata, and deleting,
renaming and moving one sample. A job's key may not use the writing ones: a block's writes are
staged as its step's proposals, and these have no proposal form."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from ..model import CATEGORIES
from .raw_data import list_filter
from .state import ApiError, Auth, Caller, OptionalQueryInt, ProjectId, SampleId, State, json_body

router = APIRouter(prefix="/v1/api/{project_id}/raw-data", tags=["raw-data"])
_PAGE = 1000


def _no_job_key(a: Caller, what: str) -> None:
    if a.scope is not None:
        raise ApiError(403, f"a job's key cannot {what}: use a project key")


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


@router.delete("/{sample_id}")
def delete_sample(project_id: ProjectId, sample_id: SampleId, state: State, a: Auth) -> JSONResponse:
    _no_job_key(a, "delete samples")
    state.store.delete_samples([sample_id])
    return JSONResponse({"success": True})


@router.post("/{sample_id}/rename")
async def rename_sample(project_id: ProjectId, sample_id: SampleId, request: Request, state: State,
                        a: Auth) -> JSONResponse:
    _no_job_key(a, "rename samples")
    body = await json_body(request)
    name = body.get("name")
    if not isinstance(name, str):
        raise ApiError(400, "name: expected the sample's new name")
    state.store.rename_sample(sample_id, name)
    return JSONResponse({"success": True})


@router.post("/{sample_id}/move")
async def move_sample(project_id: ProjectId, sample_id: SampleId, request: Request, state: State,
                      a: Auth) -> JSONResponse:
    _no_job_key(a, "move samples")
    body = await json_body(request)
    category = body.get("newCategory")
    if category not in CATEGORIES:
        raise ApiError(400, f"newCategory: expected one of {', '.join(CATEGORIES)}, got {category!r}")
    state.store.get_sample(sample_id)  # 404 for an unknown sample
    state.store.set_categories({sample_id: str(category)})
    return JSONResponse({"success": True})
