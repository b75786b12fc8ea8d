"""Evaluating a job: the task chosen from what it changes (labels, boxes, segments), the
suggestions' commands added, the result stored."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from ..errors import InvalidInput
from ..filters import SampleFilter
from ..store import Store
from ..store import jobs as job_store
from ..store import proposals as proposal_store
from ..store.evaluations import save_evaluation
from .boxes import added_boxes, evaluate_boxes
from .core import MIN_GROUP, Evaluation, check_job, load_items
from .labels import evaluate_labels
from .segments import evaluate_segments
from .suggestions import add_commands

# --- the evaluation ------------------------------------------------------------------------------------


def evaluate(store: Store, job_id: int, against_job: int | None = None, group_by: Sequence[str] = (),
             f: SampleFilter | None = None, min_group: int = MIN_GROUP, save: bool = True,
             iou: float = 0.5, target_precision: float | None = None) -> dict[str, Any]:
    """The job's evaluation document (see :func:`run_evaluation`)."""
    return run_evaluation(store, job_id, against_job, group_by, f, min_group, save, iou, target_precision).document


def run_evaluation(store: Store, job_id: int, against_job: int | None = None, group_by: Sequence[str] = (),
                   f: SampleFilter | None = None, min_group: int = MIN_GROUP, save: bool = True,
                   iou: float = 0.5, target_precision: float | None = None) -> Evaluation:
    """Evaluate the job: ``modelValidationMetrics`` (one item, the protocol's shape, with
    per-sample ``predictions``), ``thresholds`` suggested from its recorded scores and, per
    ``group_by`` key, every value's metrics with 95% bootstrap intervals, the worst first. A
    job that adds boxes is evaluated on its boxes (matches at ``iou``), one that changes audio
    samples' segments on them, else on single labels. Stored as the job's evaluation unless
    ``save`` is False."""
    if not 0 < iou <= 1:
        raise InvalidInput(f"--iou: expected a number in (0, 1], got {iou}")
    job = check_job(store, job_id)
    if against_job is not None:
        check_job(store, against_job)
    if not job_store.has_proposals(store, job_id):
        raise InvalidInput(f"job {job_id} has no proposals: there is nothing to evaluate")
    items = load_items(store, job_id, against_job, f, group_by)
    if not items:
        raise InvalidInput(f"none of job {job_id}'s samples matches the filter")
    compared = f"job {against_job}'s proposals" if against_job is not None else "the samples' labels"
    added = [added_boxes(it) if it.width is not None else [] for it in items]
    if any(added):
        records = proposal_store.read_records(store, job_id, [it.id for it in items])
        ev = evaluate_boxes(items, added, records, job, against_job, group_by, min_group, iou, target_precision)
    elif any(it.frequency is not None and (it.predicted["structuredLabels"] != it.stored["structuredLabels"]
                                           or it.truth["structuredLabels"] != it.stored["structuredLabels"])
             for it in items):
        records = proposal_store.read_records(store, job_id, [it.id for it in items if it.frequency is not None])
        ev = evaluate_segments(items, records, job, compared, group_by, min_group, target_precision)
    else:
        ev = evaluate_labels(items, job_id, compared, group_by, min_group)
    add_commands(job, ev.document)
    # what was evaluated, so that the same evaluation can be made again (the review page's report)
    ev.document["selection"] = {"filter": f.to_json() if f is not None else None,
                                "againstJob": against_job, "groupBy": list(group_by), "minGroup": min_group,
                                "iou": iou, "targetPrecision": target_precision}
    if save:
        ev.document["created"] = datetime.fromtimestamp(save_evaluation(store, job_id, ev.document), tz=UTC).isoformat()
    return ev


