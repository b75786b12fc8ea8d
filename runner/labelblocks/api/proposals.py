"""The protocol's proposed changes: a job's proposals listed, and proposals posted by a block.

With a job key, a block's writes go to its step's proposals (:func:`stage`), and reading a
sample with ``proposedActionsJobId`` shows the job's earlier steps applied
(:func:`overlay_step`): nothing reaches the dataset before the runner applies the job.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from ..errors import NotFound
from ..model import MAX_INT, SampleChange, parse_change
from ..secrets import redact
from ..store import jobs as job_store
from ..store import proposals as proposal_store
from .state import ApiError, Auth, Caller, JobId, JobScope, ProjectId, SampleId, ServerState, State, json_body

router = APIRouter(prefix="/v1/api/{project_id}/raw-data", tags=["raw-data"])


@router.get("/ai-actions-preview/{job_id}/proposed-changes")
def proposed_changes(project_id: ProjectId, job_id: JobId, state: State, a: Auth) -> dict[str, Any]:
    a.check_job(job_id)
    if job_store.get_job(state.store, job_id) is None:
        raise NotFound(f"no job {job_id}")
    return {"success": True, "proposedChanges": proposal_store.job_proposals(state.store, job_id, records=False)}


@router.post("/{sample_id}/propose-changes")
async def propose(project_id: ProjectId, sample_id: SampleId, request: Request, state: State, a: Auth) -> JSONResponse:
    data = await json_body(request)
    job_id = data.get("jobId")
    if not isinstance(job_id, int) or isinstance(job_id, bool) or not 0 <= job_id <= MAX_INT:
        raise ApiError(400, f"jobId: expected the integer job id (--propose-actions), got {job_id!r}")
    change = parse_change(data.get("proposedChanges"), "proposedChanges")
    a.check_job(job_id)
    a.check_sample(sample_id)
    state.store.get_sample(sample_id)
    if a.scope is not None:
        stage(state, a.scope, sample_id, change, merge=False)
    else:
        job_store.stage_proposal(state.store, job_id, sample_id, _step_for(state, job_id, sample_id), change)
    return JSONResponse({"success": True})


def overlay_step(a: Caller, job_id: int) -> int | None:
    """The last step whose proposals a reader sees: a job key of step k sees steps < k."""
    if a.scope is not None and a.scope.job_id == job_id:
        return a.scope.step - 1
    return None


def stage(state: ServerState, scope: JobScope, sample_id: int, change: SampleChange, merge: bool) -> None:
    """Stage ``change`` as the proposal of the job key's step (403 outside its samples)."""
    if sample_id not in scope.sample_ids:
        raise ApiError(403, f"sample {sample_id} is not part of job {scope.job_id}'s step {scope.step}")
    if scope.secrets:  # a block that echoes a secret it received: the value never reaches the proposals
        text = proposal_store.change_json(change)
        clean = redact(text, scope.secrets)
        if clean != text:
            change = proposal_store.load_change(clean)
    job_store.stage_proposal(state.store, scope.job_id, sample_id, scope.step, change, merge=merge,
                             revision=scope.revisions.get(sample_id))
    scope.proposed.add(sample_id)


def _step_for(state: ServerState, job_id: int, sample_id: int) -> int:
    """Where a proposal posted with a project key goes: the job's last step (its changes win
    when the job is applied). The sample must be one of the job's."""
    job = job_store.get_job(state.store, job_id)
    if job is None:
        raise NotFound(f"no job {job_id}")
    if sample_id not in set(job_store.job_sample_ids(state.store, job_id)):
        raise ApiError(400, f"sample {sample_id} is not part of job {job_id}")
    return max(1, job.step_count)
