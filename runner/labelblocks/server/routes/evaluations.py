"""A job's stored evaluation (``labelblocks evaluate``), in the protocol's block-metadata shape."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter

from ...api.state import ApiError, Auth, JobId, ProjectId, State
from ...store.evaluations import get_evaluation

router = APIRouter(prefix="/v1/api/{project_id}/jobs", tags=["evaluations"])


@router.get("/{job_id}/evaluation")
def job_evaluation(project_id: ProjectId, job_id: JobId, state: State, a: Auth) -> dict[str, Any]:
    """The job's latest evaluation: ``{success, created, thresholds, modelValidationMetrics,
    groups, ...}``."""
    a.check_job(job_id)
    found = get_evaluation(state.store, job_id)
    if found is None:
        raise ApiError(404, f"job {job_id} has no evaluation: run `labelblocks evaluate {job_id}` first")
    created, doc = found
    return {**doc, "success": True, "created": datetime.fromtimestamp(created, tz=UTC).isoformat()}
