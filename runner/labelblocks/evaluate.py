"""Evaluating a job: its proposals (the predictions) against the samples' labels or another
job's proposals (the truth), overall and grouped by metadata, in the protocol's block-metadata
shape (``modelValidationMetrics`` items as its bindings read them).

A sample's prediction is the sample as the job would leave it: its steps' proposals composed
and applied, so a block that leaves a label as it is predicts that label. Single labels are
evaluated here (accuracy, the confusion matrix, scikit-learn's classification report, a 95%
bootstrap interval per group); boxes and audio segments are not yet.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from .errors import InvalidInput, NotFound
from .filters import SampleFilter
from .model import Sample, compose
from .store import Store
from .store import jobs as job_store
from .store.evaluations import save_evaluation

NO_VALUE = "(no value)"  # the group of the samples without a --group-by key
BOOTSTRAP = 1000  # resamples for a group's confidence interval
MIN_GROUP = 10  # groups with fewer samples are shown, marked as too small to tell


@dataclass
class Pair:
    """One evaluated sample: what the job predicts and what the truth says."""

    sample: Sample
    prediction: str
    truth: str


def _predicted(store: Store, job_id: int, samples: Sequence[Sample]) -> dict[int, Sample]:
    """Each sample as the job would leave it (every step's proposal applied)."""
    changes = job_store.read_proposals(store, job_id, [s.id for s in samples])
    return {s.id: s.with_change(compose(changes[s.id])) if s.id in changes else s for s in samples}


def _job_samples(store: Store, job_id: int, f: SampleFilter | None) -> list[Sample]:
    if job_store.get_job(store, job_id) is None:
        raise NotFound(f"no job {job_id}: see `labelblocks jobs list`")
    ids = job_store.job_sample_ids(store, job_id)
    if f is not None:
        f = f.model_copy(update={"ids": ids})
        ids = store.select_ids(f)
    return store.get_samples(ids, missing_ok=True)


def pairs(store: Store, job_id: int, against_job: int | None = None, f: SampleFilter | None = None) -> list[Pair]:
    """The job's samples with a truth, each with its prediction: the truth is the sample's
    label as stored, or, with ``against_job``, the label that job would leave."""
    if job_store.get_job(store, job_id) is None:
        raise NotFound(f"no job {job_id}: see `labelblocks jobs list`")
    if not job_store.read_proposals(store, job_id):
        raise InvalidInput(f"job {job_id} has no proposals: there is nothing to evaluate")
    samples = _job_samples(store, job_id, f)
    predicted = _predicted(store, job_id, samples)
    truths = {s.id: s.label for s in samples}
    if against_job is not None:
        if job_store.get_job(store, against_job) is None:
            raise NotFound(f"no job {against_job}: see `labelblocks jobs list`")
        truths = {sid: s.label for sid, s in _predicted(store, against_job, samples).items()}
    out = [Pair(s, predicted[s.id].label or "", truths[s.id] or "") for s in samples if truths.get(s.id)]
    if not out:
        raise InvalidInput(f"none of job {job_id}'s selected samples has a label to compare with: label some "
                           "(e.g. after review) or compare with another job (--against-job); boxes and audio "
                           "segments are not evaluated yet")
    return out


def unevaluated(store: Store, job_id: int, ps: Sequence[Pair]) -> list[str]:
    """What the job changes that this evaluation does not cover (boxes, audio segments)."""
    predicted = _predicted(store, job_id, [p.sample for p in ps])
    out = []
    if any(predicted[p.sample.id].bounding_boxes != p.sample.bounding_boxes for p in ps):
        out.append("boundingBoxes")
    if any(predicted[p.sample.id].structured_labels != p.sample.structured_labels for p in ps):
        out.append("structuredLabels")
    return out


def metrics(ps: Sequence[Pair], classes: Sequence[str]) -> dict[str, Any]:
    """Accuracy, the confusion matrix (rows truth, columns prediction, in ``classes`` order)
    and scikit-learn's classification report, as the protocol's metrics item has them."""
    from sklearn.metrics import accuracy_score, classification_report, confusion_matrix

    truth = [p.truth for p in ps]
    pred = [p.prediction for p in ps]
    return {
        "accuracy": float(accuracy_score(truth, pred)),
        "confusionMatrix": confusion_matrix(truth, pred, labels=list(classes)).astype(float).tolist(),
        "report": classification_report(truth, pred, labels=list(classes), output_dict=True, zero_division=0),
    }


def bootstrap_interval(correct: Sequence[bool], seed: int = 0) -> tuple[float, float]:
    """A 95% bootstrap confidence interval of the accuracy of ``correct`` (percentiles of
    BOOTSTRAP resamples, with a fixed seed: the same data gives the same interval)."""
    import numpy as np

    values = np.asarray(correct, dtype=float)
    if values.size == 0:
        return 0.0, 0.0
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, values.size, (BOOTSTRAP, values.size))].mean(axis=1)
    lo, hi = np.percentile(means, [2.5, 97.5])
    return float(lo), float(hi)


def evaluate(store: Store, job_id: int, against_job: int | None = None, group_by: Sequence[str] = (),
             f: SampleFilter | None = None, min_group: int = MIN_GROUP, save: bool = True) -> dict[str, Any]:
    """The job's evaluation document: ``modelValidationMetrics`` (one item, the protocol's
    shape, with per-sample ``predictions``) and, per ``group_by`` key, every value's metrics,
    the worst accuracy first. Stored as the job's evaluation unless ``save`` is False."""
    ps = pairs(store, job_id, against_job, f)
    classes = sorted({p.truth for p in ps} | {p.prediction for p in ps})
    overall = metrics(ps, classes)
    predictions = [{"sampleId": p.sample.id, "startMs": 0.0, "endMs": float(p.sample.total_length_ms or 0.0),
                    "label": p.truth, "prediction": p.prediction, "predictionCorrect": p.truth == p.prediction,
                    "f1Score": 1.0 if p.truth == p.prediction else 0.0} for p in ps]
    item = {"type": "float32", "loss": 0.0, **overall, "onDevicePerformance": [], "predictions": predictions,
            "visualization": "none", "isSupportedOnMcu": False, "additionalMetrics": []}
    groups = []
    for key in group_by:
        if not any(key in p.sample.metadata for p in ps):
            raise InvalidInput(f"--group-by {key}: no evaluated sample has the metadata key {key!r} "
                               "(see `labelblocks metadata keys`)")
        by_value: dict[str, list[Pair]] = {}
        for p in ps:
            by_value.setdefault(p.sample.metadata.get(key, NO_VALUE), []).append(p)
        values = []
        for value, members in by_value.items():
            m = metrics(members, classes)
            lo, hi = bootstrap_interval([p.truth == p.prediction for p in members])
            values.append({"value": value, "samples": len(members), "accuracy": m["accuracy"],
                           "accuracyInterval": [lo, hi], "macroF1": m["report"]["macro avg"]["f1-score"],
                           "tooSmall": len(members) < min_group, "confusionMatrix": m["confusionMatrix"],
                           "report": m["report"]})
        values.sort(key=lambda v: (v["accuracy"], v["value"]))
        groups.append({"key": key, "values": values})
    compared = f"job {against_job}'s proposals" if against_job is not None else "the samples' labels"
    doc: dict[str, Any] = {"success": True, "jobId": job_id, "task": "single-label", "comparedWith": compared,
                           "samples": len(ps), "classes": classes, "notEvaluated": unevaluated(store, job_id, ps),
                           "thresholds": [], "modelValidationMetrics": [item], "groups": groups}
    if save:
        doc["created"] = datetime.fromtimestamp(save_evaluation(store, job_id, doc), tz=UTC).isoformat()
    return doc
