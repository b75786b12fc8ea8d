"""Learn blocks' metadata in the protocol's shape (``labelblocks learn``)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter
from fastapi import Path as PathParam

from ...api.state import ApiError, ProjectId, ReadsProjectModels, State
from ...errors import NotFound
from ...model import MAX_INT
from ...store.learn import get_learn

router = APIRouter(prefix="/v1/api/{project_id}/training", tags=["learn"])
LearnId = Annotated[int, PathParam(ge=0, le=MAX_INT)]


@router.get("/anomaly/{learn_id}/metadata")
def anomaly_metadata(project_id: ProjectId, learn_id: LearnId, state: State, a: ReadsProjectModels) -> dict[str, Any]:
    """An anomaly learn block's metadata: ``{success, created, scale, mean, clusters: [{center,
    maxError}], axes, defaultMinimumConfidenceRating, thresholds, modelValidationMetrics}``."""
    try:
        record = get_learn(state.store, learn_id)
    except NotFound as e:
        raise ApiError(404, str(e)) from None
    if record.kind != "anomaly":
        raise ApiError(404, f"learn block {learn_id} is a {record.kind} block, not an anomaly block")
    created = datetime.fromtimestamp(record.created_at, tz=UTC).isoformat()
    # a threshold's "value" is left out here: the protocol's Python bindings read it as a
    # float | str oneOf that every value matches twice, and refuse the whole answer (their
    # from_dict skips an absent one); "suggestedValue" carries the number
    thresholds = [{k: v for k, v in t.items() if k != "value"} for t in record.metadata.get("thresholds", [])]
    return {**record.metadata, "thresholds": thresholds, "success": True, "created": created}
