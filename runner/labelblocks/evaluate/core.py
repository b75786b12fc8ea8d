"""What every evaluation shares: the evaluated items read from the store, their grouping by
metadata with bootstrap intervals, and the result's shapes."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from ..errors import InvalidInput, NotFound
from ..filters import SampleFilter
from ..store import Store
from ..store import jobs as job_store
from ..store import proposals as proposal_store

NO_VALUE = "(no value)"  # the group of the samples without a --group-by key
NO_LABEL = "(no label)"  # audio: true values no predicted segment covers
BACKGROUND = "background"  # boxes: the confusion matrix's row and column of unmatched boxes
BOOTSTRAP = 1000  # resamples for a group's confidence interval (labels, segments)
BOX_BOOTSTRAP = 200  # resamples of a group's images for its mAP@50 interval (each recomputes every AP)
MIN_GROUP = 10  # groups with fewer samples are shown, marked as too small to tell
WORST = 20  # samples kept for the report, the worst first
FIELDS = ("label", "boundingBoxes", "structuredLabels")
COCO_NAMES = ("mAP", "mAP@[IoU=50]", "mAP@[IoU=75]", "mAP@[area=small]", "mAP@[area=medium]", "mAP@[area=large]",
              "Recall@[max_detections=1]", "Recall@[max_detections=10]", "Recall@[max_detections=100]",
              "Recall@[area=small]", "Recall@[area=medium]", "Recall@[area=large]")
REC_THRS = np.linspace(0.0, 1.0, 101)  # COCO's recall points


@dataclass
class Item:
    """One evaluated sample: its media fields, and its labels as stored, as the job leaves
    them (``predicted``) and as the truth has them (``truth``), each ``{label,
    boundingBoxes, structuredLabels}`` in the protocol's JSON shape."""

    id: int
    width: int | None
    height: int | None
    frequency: float | None
    stored: dict[str, Any]
    predicted: dict[str, Any]
    truth: dict[str, Any]
    metadata: dict[str, str] = field(default_factory=dict)


@dataclass
class Curve:
    """A precision-recall curve over a swept score threshold (for the report)."""

    key: str
    thresholds: list[float]
    precision: list[float]
    recall: list[float]
    suggested: float


@dataclass
class Evaluation:
    """The evaluation document, plus what the report draws and the document does not keep."""

    document: dict[str, Any]
    curves: list[Curve] = field(default_factory=list)
    worst: list[dict[str, Any]] = field(default_factory=list)  # {sampleId, truth, prediction, score}


# --- reading -------------------------------------------------------------------------------------------


def check_job(store: Store, job_id: int) -> job_store.JobRecord:
    job = job_store.get_job(store, job_id)
    if job is None:
        raise NotFound(f"no job {job_id}: see `labelblocks jobs list`")
    return job


def stored_fields(label: str | None, boxes: str, segments: str) -> dict[str, Any]:
    return {"label": label, "boundingBoxes": orjson.loads(boxes) if boxes != "[]" else [],
            "structuredLabels": orjson.loads(segments) if segments != "[]" else []}


def compose_fields(stored: dict[str, Any], texts: Sequence[str]) -> dict[str, Any]:
    """The sample as chained steps leave it: each step's fields replace earlier ones."""
    out = stored
    for text in texts:
        change = orjson.loads(text)
        update = {k: change[k] for k in FIELDS if k in change}
        if update:
            out = {**out, **update}
    return out


def load_items(store: Store, job_id: int, against_job: int | None, f: SampleFilter | None,
               group_by: Sequence[str]) -> list[Item]:
    """The job's selected samples (``f``) as Items, read as raw columns (no Sample per row)."""
    ids = job_store.job_sample_ids(store, job_id)
    flt = (f or SampleFilter(include_disabled=True)).replace(ids=ids)
    rows = store.scan(flt, "width", "height", "frequency", "label", "bounding_boxes", "structured_labels")
    selected = [r[0] for r in rows]
    mine = proposal_store.proposal_texts(store, job_id, selected)
    theirs = proposal_store.proposal_texts(store, against_job, selected) if against_job is not None else None
    values = {key: store.metadata_values(key) for key in group_by}
    out = []
    for sid, width, height, frequency, label, boxes, segments in rows:
        stored = stored_fields(label, boxes, segments)
        predicted = compose_fields(stored, mine.get(sid, ()))
        truth = stored if theirs is None else compose_fields(stored, theirs.get(sid, ()))
        md = {k: v[sid] for k, v in values.items() if sid in v}
        out.append(Item(sid, width, height, frequency, stored, predicted, truth, md))
    return out


# --- grouping and intervals ----------------------------------------------------------------------------


def group_indices(items: Sequence[Item], key: str) -> dict[str, np.ndarray]:
    """Indices of ``items`` per value of metadata ``key`` (NO_VALUE without it)."""
    if not any(key in it.metadata for it in items):
        raise InvalidInput(f"--group-by {key}: no evaluated sample has the metadata key {key!r} "
                           "(see `labelblocks metadata keys`)")
    out: dict[str, list[int]] = {}
    for i, it in enumerate(items):
        out.setdefault(it.metadata.get(key, NO_VALUE), []).append(i)
    return {k: np.asarray(v, dtype=np.int64) for k, v in out.items()}


def groups_of(items: Sequence[Item], group_by: Sequence[str], measure: Callable[[np.ndarray], dict[str, Any]],
            worst: str, min_group: int) -> list[dict[str, Any]]:
    """Per ``group_by`` key, ``measure`` of each value's items, the worst (lowest ``worst``) first."""
    out = []
    for key in group_by:
        values = [{"value": value, "samples": int(idx.size), **measure(idx), "tooSmall": int(idx.size) < min_group}
                  for value, idx in group_indices(items, key).items()]
        values.sort(key=lambda v: (v[worst], v["value"]))
        out.append({"key": key, "values": values})
    return out


def interval(values: np.ndarray) -> list[float]:
    lo, hi = np.percentile(values, [2.5, 97.5])
    return [float(lo), float(hi)]


def confusion_intervals(cm: np.ndarray, classes: Sequence[int] | None = None, seed: int = 0) -> dict[str, list[float]]:
    """95% bootstrap intervals of accuracy and macro F1 (over ``classes``, all when None) of the
    samples counted in confusion matrix ``cm``. Resampling n samples with replacement is one
    multinomial draw over the matrix's cells, so BOOTSTRAP resamples cost nothing per sample."""
    n = int(cm.sum())
    if n == 0:
        return {"accuracyInterval": [0.0, 0.0], "macroF1Interval": [0.0, 0.0]}
    k = cm.shape[0]
    draws = np.random.default_rng(seed).multinomial(n, cm.ravel() / n, size=BOOTSTRAP).reshape(BOOTSTRAP, k, k)
    tp = np.diagonal(draws, axis1=1, axis2=2).astype(float)
    predicted, true = draws.sum(axis=1), draws.sum(axis=2)
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(predicted > 0, tp / predicted, 0.0)
        recall = np.where(true > 0, tp / true, 0.0)
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    cols = list(range(k)) if classes is None else list(classes)
    return {"accuracyInterval": interval(tp.sum(axis=1) / n), "macroF1Interval": interval(f1[:, cols].mean(axis=1))}


def ratio_interval(numer: np.ndarray, denom: np.ndarray, seed: int = 0) -> list[float]:
    """95% bootstrap interval of sum(numer) / sum(denom), resampling the samples."""
    n = numer.size
    if n == 0 or denom.sum() == 0:
        return [0.0, 0.0]
    rng = np.random.default_rng(seed)
    out = np.empty(BOOTSTRAP)
    step = max(1, 20_000_000 // n)
    for start in range(0, BOOTSTRAP, step):
        idx = rng.integers(0, n, (min(step, BOOTSTRAP - start), n))
        d = denom[idx].sum(axis=1)
        out[start : start + idx.shape[0]] = np.where(d > 0, numer[idx].sum(axis=1) / np.maximum(d, 1e-300), 0.0)
    return interval(out)


def macro_f1_interval(per_sample: np.ndarray, classes: Sequence[int], seed: int = 0) -> list[float]:
    """95% bootstrap interval of the macro F1 (over ``classes``) of the samples whose
    confusion matrices (weighted: seconds) are ``per_sample`` [n, k, k], resampling samples."""
    n = per_sample.shape[0]
    if n == 0 or not len(classes):
        return [0.0, 0.0]
    rng = np.random.default_rng(seed)
    cols = list(classes)
    flat = per_sample.reshape(n, -1)
    out = np.empty(BOOTSTRAP)
    for b in range(BOOTSTRAP):
        cm = (np.bincount(rng.integers(0, n, n), minlength=n) @ flat).reshape(per_sample.shape[1:])
        tp = np.diagonal(cm)
        with np.errstate(divide="ignore", invalid="ignore"):
            precision = np.where(cm.sum(axis=0) > 0, tp / cm.sum(axis=0), 0.0)
            recall = np.where(cm.sum(axis=1) > 0, tp / cm.sum(axis=1), 0.0)
            f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
        out[b] = f1[cols].mean()
    return interval(out)


def metrics_item(measured: dict[str, Any], predictions: list[dict[str, Any]]) -> dict[str, Any]:
    """A ``modelValidationMetrics`` item of the protocol, with what its bindings require."""
    return {"type": "float32", "loss": 0.0, "additionalMetrics": [], **measured, "onDevicePerformance": [],
            "predictions": predictions, "visualization": "none", "isSupportedOnMcu": False}


def not_evaluated(items: Sequence[Item], task: str) -> list[str]:
    """What the job changes that this evaluation does not cover."""
    out = []
    if task != "single-label" and any(it.predicted["label"] != it.stored["label"] for it in items):
        out.append("label")
    if task != "boxes" and any(it.predicted["boundingBoxes"] != it.stored["boundingBoxes"] for it in items):
        out.append("boundingBoxes")
    if task != "segments" and any(it.predicted["structuredLabels"] != it.stored["structuredLabels"] for it in items):
        out.append("structuredLabels")
    return out


