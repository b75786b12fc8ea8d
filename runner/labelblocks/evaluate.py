"""Evaluating a job: its proposals (the predictions) against the samples' labels or another
job's proposals (the truth), overall and grouped by metadata, in the protocol's block-metadata
shape (``thresholds`` and ``modelValidationMetrics`` items as its bindings read them).

A sample's prediction is the sample as the job would leave it: its steps' proposals composed
and applied, so a block that leaves a label as it is predicts that label. Three tasks:

- single labels, with scikit-learn (accuracy, the confusion matrix, its classification report);
- boxes (a job that adds boxes; the boxes it keeps are not predictions), with faster-coco-eval
  for the COCO figures and a greedy matching at an IoU for per-class precision / recall / F1
  and a confusion matrix with a background row and column;
- audio segments (a job that changes an audio sample's structured labels): time-weighted
  accuracy and confusion matrix from the overlaps of true and predicted segments.

Samples are read as raw columns and matched with numpy, in bulk: 100,000 images of 10 boxes
cost about what the COCO evaluator alone costs on them (``benchmarks/evaluate.py``).
Threshold suggestions come from the scores the job recorded (proposed boxes' scores, the
near misses and window scores blocks keep in their records), never from running the model.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
import orjson

from .errors import InvalidInput, NotFound
from .filters import SampleFilter
from .store import Store
from .store import jobs as job_store
from .store.evaluations import save_evaluation

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
_REC_THRS = np.linspace(0.0, 1.0, 101)  # COCO's recall points


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


def _check_job(store: Store, job_id: int) -> job_store.JobRecord:
    job = job_store.get_job(store, job_id)
    if job is None:
        raise NotFound(f"no job {job_id}: see `labelblocks jobs list`")
    return job


def _stored(label: str | None, boxes: str, segments: str) -> dict[str, Any]:
    return {"label": label, "boundingBoxes": orjson.loads(boxes) if boxes != "[]" else [],
            "structuredLabels": orjson.loads(segments) if segments != "[]" else []}


def _compose(stored: dict[str, Any], texts: Sequence[str]) -> dict[str, Any]:
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
    mine = job_store.proposal_texts(store, job_id, selected)
    theirs = job_store.proposal_texts(store, against_job, selected) if against_job is not None else None
    values = {key: store.metadata_values(key) for key in group_by}
    out = []
    for sid, width, height, frequency, label, boxes, segments in rows:
        stored = _stored(label, boxes, segments)
        predicted = _compose(stored, mine.get(sid, ()))
        truth = stored if theirs is None else _compose(stored, theirs.get(sid, ()))
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


def _groups(items: Sequence[Item], group_by: Sequence[str], measure: Callable[[np.ndarray], dict[str, Any]],
            worst: str, min_group: int) -> list[dict[str, Any]]:
    """Per ``group_by`` key, ``measure`` of each value's items, the worst (lowest ``worst``) first."""
    out = []
    for key in group_by:
        values = [{"value": value, "samples": int(idx.size), **measure(idx), "tooSmall": int(idx.size) < min_group}
                  for value, idx in group_indices(items, key).items()]
        values.sort(key=lambda v: (v[worst], v["value"]))
        out.append({"key": key, "values": values})
    return out


def _interval(values: np.ndarray) -> list[float]:
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
    return {"accuracyInterval": _interval(tp.sum(axis=1) / n), "macroF1Interval": _interval(f1[:, cols].mean(axis=1))}


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
    return _interval(out)


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
    return _interval(out)


def _metrics_item(measured: dict[str, Any], predictions: list[dict[str, Any]]) -> dict[str, Any]:
    """A ``modelValidationMetrics`` item of the protocol, with what its bindings require."""
    return {"type": "float32", "loss": 0.0, "additionalMetrics": [], **measured, "onDevicePerformance": [],
            "predictions": predictions, "visualization": "none", "isSupportedOnMcu": False}


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
    job = _check_job(store, job_id)
    if against_job is not None:
        _check_job(store, against_job)
    if not job_store.has_proposals(store, job_id):
        raise InvalidInput(f"job {job_id} has no proposals: there is nothing to evaluate")
    items = load_items(store, job_id, against_job, f, group_by)
    if not items:
        raise InvalidInput(f"none of job {job_id}'s samples matches the filter")
    compared = f"job {against_job}'s proposals" if against_job is not None else "the samples' labels"
    added = [_added_boxes(it) if it.width is not None else [] for it in items]
    if any(added):
        records = job_store.read_records(store, job_id, [it.id for it in items])
        ev = evaluate_boxes(items, added, records, job, against_job, group_by, min_group, iou, target_precision)
    elif any(it.frequency is not None and (it.predicted["structuredLabels"] != it.stored["structuredLabels"]
                                           or it.truth["structuredLabels"] != it.stored["structuredLabels"])
             for it in items):
        records = job_store.read_records(store, job_id, [it.id for it in items if it.frequency is not None])
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


def shell_arg(s: str) -> str:
    """``s`` as one shell word, readable: multi-line text as $'...'."""
    import shlex

    if "\n" in s:
        return "$'" + s.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n") + "'"
    return shlex.quote(s)


def set_command(action: str, step: int, params: dict[str, str]) -> str:
    return f"labelblocks actions set {shell_arg(action)} --step {step} " + " ".join(
        f"-p {shell_arg(f'{k}={v}')}" for k, v in params.items())


def add_commands(job: job_store.JobRecord, doc: dict[str, Any]) -> None:
    """Each suggested threshold's `actions set` command, where a step's block says which of
    its parameters sets it (Block.threshold_parameters) or its records named the parameter;
    ``apply``: per step, the parameters that set every suggestion at once, which `actions set
    NAME --suggested` applies."""
    from .errors import LabelblocksError
    from .plugins import get_registry

    if not doc["thresholds"]:
        return
    steps: dict[int, tuple[Any, dict[str, str]]] = {}
    for st in job.definition.get("steps", []):
        try:
            cls = get_registry().get(str(st["block"])).cls
        except (LabelblocksError, KeyError):
            cls = None
        steps[int(st["step"])] = (cls, {str(k): str(v) for k, v in (st.get("parameters") or {}).items()})
    together: dict[int, dict[str, str]] = {}
    for t in doc["thresholds"]:
        if t.get("noSuggestion"):
            continue
        found: tuple[int, dict[str, str]] | None = None
        for n, (cls, params) in steps.items():
            if cls is not None and t.get("step", n) == n:
                one = cls.threshold_parameters(params, t["key"], t["suggestedValue"])
                if one:
                    found = (n, one)
                    break
        if found is None and "param" in t and t.get("step") in steps:
            found = (t["step"], {t["param"]: f"{t['suggestedValue']:g}"})
        if found is None:
            continue
        n, one = found
        t["step"], t["command"] = n, set_command(job.action, n, one)
        steps[n][1].update(one)
        together.setdefault(n, {}).update(one)
    if together:
        doc["apply"] = [{"step": n, "parameters": params} for n, params in sorted(together.items())]
        doc["applyAll"] = f"labelblocks actions set {shell_arg(job.action)} --suggested"


def _not_evaluated(items: Sequence[Item], task: str) -> list[str]:
    """What the job changes that this evaluation does not cover."""
    out = []
    if task != "single-label" and any(it.predicted["label"] != it.stored["label"] for it in items):
        out.append("label")
    if task != "boxes" and any(it.predicted["boundingBoxes"] != it.stored["boundingBoxes"] for it in items):
        out.append("boundingBoxes")
    if task != "segments" and any(it.predicted["structuredLabels"] != it.stored["structuredLabels"] for it in items):
        out.append("structuredLabels")
    return out


# --- single labels -------------------------------------------------------------------------------------


def label_metrics(truth: np.ndarray, pred: np.ndarray, classes: Sequence[str],
                  weights: np.ndarray | None = None, present_only: bool = False) -> dict[str, Any]:
    """Accuracy, the confusion matrix (rows truth, columns prediction, in ``classes`` order)
    and scikit-learn's classification report of class codes ``truth`` / ``pred``; with
    ``present_only``, the report (and its averages) covers the classes these samples have."""
    from sklearn.metrics import accuracy_score, classification_report, confusion_matrix

    labels = list(range(len(classes)))
    cm = confusion_matrix(truth, pred, labels=labels, sample_weight=weights)
    shown = [i for i in labels if cm[i].sum() or cm[:, i].sum()] if present_only else labels
    report = classification_report(truth, pred, labels=shown, target_names=[classes[i] for i in shown],
                                   output_dict=True, zero_division=0, sample_weight=weights)
    return {"accuracy": float(accuracy_score(truth, pred, sample_weight=weights)),
            "confusionMatrix": cm.astype(float).tolist(), "report": report, "_cm": cm, "_shown": shown}


def _public(m: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in m.items() if not k.startswith("_")}


def evaluate_labels(items: Sequence[Item], job_id: int, compared: str, group_by: Sequence[str],
                    min_group: int) -> Evaluation:
    ev = [it for it in items if it.truth["label"]]
    if not ev:
        raise InvalidInput(f"none of job {job_id}'s selected samples has a label to compare with: label some "
                           "(e.g. after review) or compare with another job (--against-job)")
    truth = [it.truth["label"] for it in ev]
    pred = [it.predicted["label"] or "" for it in ev]
    classes = sorted(set(truth) | set(pred))
    code = {c: i for i, c in enumerate(classes)}
    t = np.fromiter((code[x] for x in truth), np.int64, len(ev))
    p = np.fromiter((code[x] for x in pred), np.int64, len(ev))
    correct = t == p
    predictions = [{"sampleId": it.id, "startMs": 0.0, "endMs": 0.0, "label": tr, "prediction": pr,
                    "predictionCorrect": bool(ok), "f1Score": 1.0 if ok else 0.0}
                   for it, tr, pr, ok in zip(ev, truth, pred, correct.tolist(), strict=True)]

    def measure(idx: np.ndarray) -> dict[str, Any]:
        m = label_metrics(t[idx], p[idx], classes, present_only=True)
        return {"accuracy": m["accuracy"], "macroF1": m["report"]["macro avg"]["f1-score"],
                **confusion_intervals(m["_cm"], m["_shown"]), "confusionMatrix": m["confusionMatrix"],
                "report": m["report"]}

    worst = [{"sampleId": it.id, "truth": tr, "prediction": pr, "score": 0.0}
             for it, tr, pr, ok in zip(ev, truth, pred, correct.tolist(), strict=True) if not ok][:WORST]
    doc = {"success": True, "jobId": job_id, "task": "single-label", "comparedWith": compared,
           "samples": len(ev), "classes": classes, "notEvaluated": _not_evaluated(ev, "single-label"),
           "thresholds": [], "modelValidationMetrics": [_metrics_item(_public(label_metrics(t, p, classes)),
                                                                      predictions)],
           "groups": _groups(ev, group_by, measure, "accuracy", min_group)}
    return Evaluation(doc, worst=worst)


# --- boxes ---------------------------------------------------------------------------------------------


def _box_key(b: dict[str, Any]) -> tuple[Any, ...]:
    return (b["label"], b["x"], b["y"], b["width"], b["height"], b.get("score"))


def _added_boxes(it: Item) -> list[dict[str, Any]]:
    """The boxes the job adds to the image: the ones it keeps from the sample are not
    predictions (the truth compared with itself means nothing). A stored box has no score,
    so a scored box the job proposes is a prediction even where it equals a stored one."""
    pred = it.predicted["boundingBoxes"]
    if pred is it.stored["boundingBoxes"]:
        return []
    kept = Counter(_box_key(b) for b in it.stored["boundingBoxes"])
    out = []
    for b in pred:
        k = _box_key(b)
        if kept[k] > 0:
            kept[k] -= 1
        else:
            out.append(b)
    return out


@dataclass
class Boxes:
    """Boxes as columns: the image (index into the evaluated items), class code, xywh, score."""

    image: np.ndarray
    cls: np.ndarray
    xywh: np.ndarray
    score: np.ndarray

    @classmethod
    def of(cls, per_image: Sequence[Sequence[dict[str, Any]]], code: dict[str, int]) -> Boxes:
        counts = [len(bs) for bs in per_image]
        flat = [b for bs in per_image for b in bs]
        n = len(flat)
        return cls(np.repeat(np.arange(len(per_image), dtype=np.int64), counts),
                   np.fromiter((code[b["label"]] for b in flat), np.int64, n),
                   np.array([(b["x"], b["y"], b["width"], b["height"]) for b in flat], dtype=np.float64).reshape(n, 4),
                   np.fromiter((1.0 if b.get("score") is None else b["score"] for b in flat), np.float64, n))

    def __len__(self) -> int:
        return int(self.image.size)

    def take(self, mask: np.ndarray) -> Boxes:
        return Boxes(self.image[mask], self.cls[mask], self.xywh[mask], self.score[mask])


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of xywh rows ``a[i]`` and ``b[i]``."""
    ix = np.clip(np.minimum(a[:, 0] + a[:, 2], b[:, 0] + b[:, 2]) - np.maximum(a[:, 0], b[:, 0]), 0, None)
    iy = np.clip(np.minimum(a[:, 1] + a[:, 3], b[:, 1] + b[:, 3]) - np.maximum(a[:, 1], b[:, 1]), 0, None)
    inter = ix * iy
    union = a[:, 2] * a[:, 3] + b[:, 2] * b[:, 3] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


MAX_PAIRS = 4_000_000  # candidate (prediction, true box) pairs held at once


def match(truth: Boxes, pred: Boxes, iou: float, same_class: bool) -> np.ndarray:
    """Greedy matching per image, COCO's way: predictions by descending score, each to the
    unmatched true box of largest IoU >= ``iou`` (of its own class with ``same_class``, else
    any: a wrong class is a confusion). Returns per prediction the matched true box's index,
    or -1. Images are matched in bulk, one round per prediction rank within its image."""
    out = np.full(len(pred), -1, dtype=np.int64)
    if not len(pred) or not len(truth):
        return out
    n_images = int(max(truth.image.max(), pred.image.max())) + 1
    t_order = np.argsort(truth.image, kind="stable")
    t_count = np.bincount(truth.image, minlength=n_images)
    t_start = np.concatenate(([0], np.cumsum(t_count)[:-1]))
    p_order = np.lexsort((-pred.score, pred.image))  # by image, best score first (stable)
    p_image = pred.image[p_order]
    p_first = np.searchsorted(p_image, p_image, side="left")
    rank = np.arange(p_order.size) - p_first
    pairs_per = t_count[p_image]
    free = np.ones(len(truth), dtype=bool)
    cum = np.cumsum(pairs_per)
    start = 0
    while start < p_order.size:
        # a chunk of about MAX_PAIRS pairs, ending at an image's end (its rounds stay in one chunk)
        end = int(np.searchsorted(cum, (cum[start - 1] if start else 0) + MAX_PAIRS, side="right"))
        end = int(np.searchsorted(p_image, p_image[max(end, start + 1) - 1], side="right"))
        sl = slice(start, end)
        counts = pairs_per[sl]
        pp = np.repeat(np.arange(start, end), counts)  # position in p_order
        offs = np.arange(pp.size) - np.repeat(np.cumsum(counts) - counts, counts)
        tt = t_order[t_start[p_image[pp]] + offs]
        pi = p_order[pp]
        ious = _iou(pred.xywh[pi], truth.xywh[tt])
        ok = ious >= iou
        if same_class:
            ok &= pred.cls[pi] == truth.cls[tt]
        pp, tt, ious = pp[ok], tt[ok], ious[ok]
        # by rank, then prediction, then IoU descending (ties: the later true box, as COCO)
        order = np.lexsort((-tt, -ious, pp, rank[pp]))
        pp, tt = pp[order], tt[order]
        r_bounds = np.searchsorted(rank[pp], np.arange(int(rank[sl].max()) + 2))
        for r in range(r_bounds.size - 1):
            a, b = r_bounds[r], r_bounds[r + 1]
            if a == b:
                continue
            cp, ct = pp[a:b], tt[a:b]
            avail = free[ct]
            cp, ct = cp[avail], ct[avail]
            if not cp.size:
                continue
            first = np.flatnonzero(np.concatenate(([True], cp[1:] != cp[:-1])))
            out[p_order[cp[first]]] = ct[first]
            free[ct[first]] = False
        start = end
    return out


class Map50:
    """mAP@50 of a set of images, COCO's way (101-point interpolated precision, averaged over
    the classes with true boxes), from a class-aware matching at IoU 0.5, for any weighing of
    the images: a bootstrap resample counts an image drawn twice twice.

    The predictions are sorted once, by class then descending score; a weighing is then a few
    passes over the arrays: the precision envelope and the 101 recall points are taken for
    every class at once, each class's values lifted by an offset that keeps the classes apart.
    Equal to COCO's figure for images of up to 100 predictions per class (its maxDets)."""

    def __init__(self, truth: Boxes, pred: Boxes, matched50: np.ndarray, n_classes: int, images: np.ndarray) -> None:
        self.images, self.k = images, n_classes
        self.n_images = int(max(truth.image.max(initial=0), pred.image.max(initial=0))) + 1
        in_t, in_p = np.isin(truth.image, images), np.isin(pred.image, images)
        self.t_img, self.t_cls = truth.image[in_t], truth.cls[in_t]
        order = np.lexsort((-pred.score[in_p], pred.cls[in_p]))
        self.p_img, self.p_cls = pred.image[in_p][order], pred.cls[in_p][order]
        self.hit = (matched50[in_p] >= 0)[order].astype(float)
        self.starts = np.searchsorted(self.p_cls, np.arange(n_classes + 1))  # class c: starts[c]:starts[c + 1]
        self.lift = 2.0 * self.p_cls  # each class's values (in [0, 1]) above the classes before it
        self.targets = (_REC_THRS[None, :] + 2.0 * np.arange(n_classes)[:, None]).ravel()
        self.seg_end = np.repeat(self.starts[1:], _REC_THRS.size)

    def value(self, image_weight: np.ndarray | None = None) -> float:
        w_img = np.ones(self.n_images) if image_weight is None else image_weight.astype(float)
        n_true = np.bincount(self.t_cls, weights=w_img[self.t_img], minlength=self.k)
        if not (n_true > 0).any():
            return 0.0
        w = w_img[self.p_img]
        tps, kept = np.cumsum(self.hit * w), np.cumsum(w)
        first = self.starts[:-1]
        tps -= np.concatenate(([0.0], tps))[first][self.p_cls]
        kept -= np.concatenate(([0.0], kept))[first][self.p_cls]
        with np.errstate(divide="ignore", invalid="ignore"):
            precision = np.where(kept > 0, tps / kept, 0.0)
            recall = np.where(n_true[self.p_cls] > 0, tps / n_true[self.p_cls], 0.0)
        # the envelope: the best precision at this recall or beyond, within the class
        envelope = np.maximum.accumulate((precision - self.lift)[::-1])[::-1] + self.lift
        idx = np.searchsorted(recall + self.lift, self.targets, side="left")
        at = np.where(idx < self.seg_end, envelope[np.minimum(idx, max(envelope.size - 1, 0))]
                      if envelope.size else 0.0, 0.0).reshape(self.k, -1)
        return float(at[n_true > 0].mean(axis=1).mean())

    def interval(self, seed: int = 0) -> list[float]:
        """95% bootstrap interval over the images (BOX_BOOTSTRAP resamples)."""
        if not self.images.size:
            return [0.0, 0.0]
        rng = np.random.default_rng(seed)
        draws = (np.bincount(self.images[rng.integers(0, self.images.size, self.images.size)],
                             minlength=self.n_images) for _ in range(BOX_BOOTSTRAP))
        return _interval(np.asarray([self.value(w) for w in draws]))


def coco_stats(items: Sequence[Item], truth: Boxes, pred: Boxes, classes: Sequence[str]) -> list[float]:
    """The 12 COCO detection figures (COCO_NAMES) of the predictions, by faster-coco-eval."""
    from faster_coco_eval import COCO, COCOeval_faster

    if not len(pred):
        return [0.0] * len(COCO_NAMES)
    ids = [it.id for it in items]
    t_img, p_img = truth.image.tolist(), pred.image.tolist()
    t_cls, p_cls = (truth.cls + 1).tolist(), (pred.cls + 1).tolist()
    t_box, p_box = truth.xywh.tolist(), pred.xywh.tolist()
    images = [{"id": it.id, "width": it.width, "height": it.height} for it in items]
    anns = [{"id": k + 1, "image_id": ids[t_img[k]], "category_id": t_cls[k], "bbox": t_box[k],
             "area": t_box[k][2] * t_box[k][3], "iscrowd": 0} for k in range(len(t_img))]
    dets = [{"image_id": ids[p_img[k]], "category_id": p_cls[k], "bbox": p_box[k], "score": s}
            for k, s in enumerate(pred.score.tolist())]
    gt = COCO()
    gt.dataset = {"images": images, "annotations": anns,
                  "categories": [{"id": i + 1, "name": c} for i, c in enumerate(classes)]}
    gt.createIndex()
    e = COCOeval_faster(gt, gt.loadRes(dets), "bbox", print_function=lambda *a, **k: None)
    e.evaluate()
    e.accumulate()
    e.summarize()
    return [max(0.0, float(v)) for v in e.stats[: len(COCO_NAMES)]]


def box_confusion(truth: Boxes, pred: Boxes, matched: np.ndarray, n_classes: int) -> np.ndarray:
    """The confusion matrix [truth, prediction] with a background row and column (index
    ``n_classes``) from a class-agnostic matching."""
    k = n_classes + 1
    is_m = matched >= 0
    hit = np.zeros(len(truth), dtype=bool)
    hit[matched[is_m]] = True
    cells = np.concatenate((truth.cls[matched[is_m]] * k + pred.cls[is_m],  # matched: truth -> prediction
                            n_classes * k + pred.cls[~is_m],  # a prediction matching nothing
                            truth.cls[~hit] * k + n_classes))  # a true box nothing matched
    return np.bincount(cells, minlength=k * k).reshape(k, k).astype(float)


def box_report(cm: np.ndarray, classes: Sequence[str]) -> dict[str, Any]:
    """Per-class precision / recall / F1 / support from a confusion matrix with background."""
    report: dict[str, Any] = {}
    for i, c in enumerate(classes):
        tp, predicted_n, true_n = cm[i, i], cm[:, i].sum(), cm[i].sum()
        precision = tp / predicted_n if predicted_n else 0.0
        recall = tp / true_n if true_n else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        report[c] = {"precision": float(precision), "recall": float(recall), "f1-score": float(f1),
                     "support": float(true_n)}
    return report


def between(s: np.ndarray, i: int) -> float:
    """A threshold that keeps the scores from ``s[i]`` up and drops the ones below (``s``
    ascending): halfway to the next lower recorded score, so that it means the same to a
    block that keeps scores above its threshold and to one that keeps scores at or above it;
    rounded to 4 places where that stays strictly between."""
    hi = float(s[i])
    lo = float(s[i - 1]) if i > 0 else max(0.0, hi - 2e-4)
    mid = (hi + lo) / 2
    return round(mid, 4) if lo < round(mid, 4) < hi else mid


def sweep(scores: np.ndarray, hits: np.ndarray, n_true: float,
          target_precision: float | None) -> tuple[Curve, tuple[float, float, float, float], float | None]:
    """Precision / recall at every recorded score taken as the minimum: (the curve, (F1,
    threshold, precision, recall) of the best F1 (the lowest score among ties), the lowest
    threshold reaching ``target_precision`` or None). Thresholds lie between recorded scores
    (:func:`between`)."""
    order = np.argsort(-scores, kind="stable")
    s, h = scores[order], hits[order].astype(float)
    tps = np.cumsum(h)
    kept = np.arange(1, s.size + 1, dtype=float)
    last = np.concatenate((s[1:] != s[:-1], [True]))  # the last of equal scores holds all of them
    s, tps, kept = s[last][::-1], tps[last][::-1], kept[last][::-1]  # ascending thresholds
    precision = tps / kept
    recall = tps / n_true if n_true else np.zeros_like(tps)
    with np.errstate(divide="ignore", invalid="ignore"):
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    b = int(np.argmax(f1))
    reaching = None
    if target_precision is not None:
        ok = np.flatnonzero(precision >= target_precision)
        reaching = between(s, int(ok[0])) if ok.size else None
    curve = Curve("", s.tolist(), precision.tolist(), recall.tolist(), float(s[b]))
    return curve, (float(f1[b]), between(s, b), float(precision[b]), float(recall[b])), reaching


def _threshold_item(key: str, description: str, value: float, best: tuple[float, float, float, float],
                    reaching: float | None, target_precision: float | None, **extra: Any) -> dict[str, Any]:
    f1, t, precision, recall = best
    item: dict[str, Any] = {
        "key": key, "description": description,
        "helpText": "the threshold that maximises F1 against the truth, from the job's recorded scores",
        "value": value, "suggestedValue": t,
        "suggestedValueText": f"F1 {f1:.2f} (precision {precision:.2f}, recall {recall:.2f}) at {t:.3f}", **extra}
    if f1 == 0:  # no threshold finds anything true: nothing to suggest but keeping what there is
        item.update(suggestedValue=value, noSuggestion=True,
                    suggestedValueText="no suggestion: no recorded score finds a true one (F1 0 at every threshold)")
    if target_precision is not None:
        item["targetPrecision"] = target_precision
        item["targetPrecisionValue"] = reaching
    return item


def _near_misses(items: Sequence[Item], records: dict[int, list[tuple[int, dict[str, Any]]]]) -> list[list[dict]]:
    """Per image, the candidate boxes a block recorded under its threshold (``near_misses``)."""
    return [[b for _, rec in records.get(it.id, ()) for b in rec.get("near_misses") or ()
             if isinstance(b, dict) and {"label", "score", "x", "y", "width", "height"} <= b.keys()]
            for it in items]


def box_thresholds(truth: Boxes, pred: Boxes, near: Boxes, classes: Sequence[str], iou: float,
                   target_precision: float | None) -> tuple[list[dict[str, Any]], list[Curve]]:
    """Per class, the minimum score that maximises F1 against the truth, over the proposed
    boxes and the near misses the job recorded (which reach under the block's current
    threshold); with ``target_precision``, also the lowest score that reaches it.

    One class-aware matching serves every threshold: it takes predictions by descending
    score, so dropping those under a threshold leaves the others' matches as they were."""
    both = Boxes(np.concatenate((pred.image, near.image)), np.concatenate((pred.cls, near.cls)),
                 np.concatenate((pred.xywh, near.xywh)), np.concatenate((pred.score, near.score)))
    matched = match(truth, both, iou, same_class=True)
    out, curves = [], []
    for c, label in enumerate(classes):
        sel = both.cls == c
        if not sel.any():
            continue
        curve, best, reaching = sweep(both.score[sel], matched[sel] >= 0, float((truth.cls == c).sum()),
                                      target_precision)
        curve.key = label
        curves.append(curve)
        current = float(pred.score[pred.cls == c].min()) if (pred.cls == c).any() else float(both.score[sel].max())
        out.append(_threshold_item(label, f"minimum score of a {label} box", current, best, reaching,
                                   target_precision, scores=int(sel.sum()),
                                   nearMisses=int((near.cls == c).sum())))
    return out, curves


def evaluate_boxes(items: Sequence[Item], added: Sequence[list[dict[str, Any]]],
                   records: dict[int, list[tuple[int, dict[str, Any]]]], job: job_store.JobRecord,
                   against_job: int | None, group_by: Sequence[str], min_group: int, iou: float,
                   target_precision: float | None) -> Evaluation:
    """The box evaluation (``accuracy`` is mAP@50, as the protocol reports it)."""
    keep = [i for i, it in enumerate(items) if it.width is not None]
    imgs = [items[i] for i in keep]
    t_lists = [it.truth["boundingBoxes"] for it in imgs]
    p_lists = [added[i] for i in keep]
    if not any(t_lists):
        if any(it.truth["label"] for it in imgs):
            raise InvalidInput(f"job {job.id} proposes boxes but the selected samples have single labels, not "
                               "boxes: there is nothing to compare its boxes with")
        raise InvalidInput(f"none of job {job.id}'s selected images has boxes to compare with: select reviewed "
                           "ones or compare with another job (--against-job)")
    n_lists = _near_misses(imgs, records)
    classes = sorted({b["label"] for bs in (*t_lists, *p_lists) for b in bs})
    code = {c: i for i, c in enumerate(classes)}
    n_lists = [[b for b in bs if b["label"] in code] for bs in n_lists]
    truth, pred, near = Boxes.of(t_lists, code), Boxes.of(p_lists, code), Boxes.of(n_lists, code)
    k = len(classes)
    matched = match(truth, pred, iou, same_class=False)
    matched50 = match(truth, pred, 0.5, same_class=True)

    # per image: true positives (matched, same class), predictions, true boxes -> F1
    ok = matched >= 0
    ok[ok] = truth.cls[matched[ok]] == pred.cls[ok]
    tp_i = np.bincount(pred.image[ok], minlength=len(imgs))
    np_i = np.bincount(pred.image, minlength=len(imgs))
    nt_i = np.bincount(truth.image, minlength=len(imgs))
    denom = np_i + nt_i
    f1_i = np.where(denom > 0, 2 * tp_i / np.maximum(denom, 1), 1.0)

    def xywh01(b: dict[str, Any], it: Item) -> dict[str, Any]:
        w, h = it.width or 1, it.height or 1
        return {"label": b["label"], "x": b["x"] / w, "y": b["y"] / h, "width": b["width"] / w,
                "height": b["height"] / h, "score": 1.0 if b.get("score") is None else b["score"]}

    f1_list = f1_i.tolist()
    predictions = [{"sampleId": it.id, "startMs": 0.0, "endMs": 0.0, "prediction": "",
                    "predictionCorrect": f1_list[i] == 1.0, "f1Score": f1_list[i],
                    "boundingBoxes": [xywh01(b, it) for b in p_lists[i]]} for i, it in enumerate(imgs)]
    cm = box_confusion(truth, pred, matched, k)
    stats = coco_stats(imgs, truth, pred, classes)
    measured = {"confusionMatrix": cm.tolist(), "report": box_report(cm, classes), "accuracy": stats[1],
                "additionalMetrics": [{"name": n, "value": f"{v:.3f}", "fullPrecisionValue": v}
                                      for n, v in zip(COCO_NAMES, stats, strict=True)]}

    def measure(idx: np.ndarray) -> dict[str, Any]:
        sel = np.zeros(len(imgs), dtype=bool)
        sel[idx] = True
        in_t, in_p = sel[truth.image], sel[pred.image]
        remap = np.cumsum(sel) - 1
        t, p = truth.take(in_t), pred.take(in_p)
        t.image, p.image = remap[t.image], remap[p.image]
        m = matched[in_p]
        m = np.where(m >= 0, np.cumsum(in_t)[np.maximum(m, 0)] - 1, -1)
        g_cm = box_confusion(t, p, m, k)
        group_stats = coco_stats([imgs[i] for i in idx], t, p, classes)
        return {"mAP50": group_stats[1], "mAP50Interval": Map50(truth, pred, matched50, k, idx).interval(),
                "mAP": group_stats[0], "confusionMatrix": g_cm.tolist(), "report": box_report(g_cm, classes)}

    # thresholds only where a step recorded scores (a renaming step's boxes have none: nothing to tune)
    scored = any(b.get("score") is not None for bs in p_lists for b in bs)
    thresholds, curves = box_thresholds(truth, pred, near, classes, iou, target_precision) if scored else ([], [])
    step_thresholds(job, thresholds)
    order = np.argsort(f1_i, kind="stable")[:WORST]
    worst = [{"sampleId": imgs[i].id, "truth": t_lists[i], "prediction": p_lists[i], "score": f1_list[i]}
             for i in order.tolist() if f1_list[i] < 1.0]
    compared = f"job {against_job}'s boxes" if against_job is not None else "the samples' boxes"
    doc = {"success": True, "jobId": job.id, "task": "boxes", "iou": iou, "samples": len(imgs),
           "comparedWith": "the boxes the job adds, against " + compared,
           "mAP50": measured["accuracy"],
           "classes": [*classes, BACKGROUND], "notEvaluated": _not_evaluated(imgs, "boxes"),
           "thresholds": thresholds, "modelValidationMetrics": [_metrics_item(measured, predictions)],
           "groups": _groups(imgs, group_by, measure, "mAP50", min_group)}
    if not scored:
        doc["thresholdsNote"] = ("nothing to tune: the job's boxes carry no scores (none of its steps records one, "
                                 "as a renaming step does not)")
    return Evaluation(doc, curves, worst)


def step_thresholds(job: job_store.JobRecord, thresholds: list[dict[str, Any]]) -> None:
    """Each box threshold's current value as the step that proposes that label set it
    (Block.threshold_value: owlvit's prompt line), instead of the lowest score it proposed."""
    from .errors import LabelblocksError
    from .plugins import get_registry

    for i, st in enumerate(job.definition.get("steps", []), 1):
        try:
            cls = get_registry().get(str(st["block"])).cls
        except (LabelblocksError, KeyError):
            continue
        params = {str(k): str(v) for k, v in (st.get("parameters") or {}).items()}
        for t in thresholds:
            if "currentFrom" in t:
                continue
            value = cls.threshold_value(params, t["key"])
            if value is not None:
                t.update(value=value, step=int(st.get("step", i)), currentFrom="step")


# --- audio segments ------------------------------------------------------------------------------------


def overlaps(truth: Sequence[dict[str, Any]], predicted: Sequence[dict[str, Any]]) -> list[tuple[str, str, int, int]]:
    """``(true label, predicted label, first value, last value)`` of every stretch where a true
    segment meets a predicted one, in one pass over both (sorted) lists; true values no
    predicted segment covers are predicted NO_LABEL, predicted values without truth are left
    out (nothing says what they should be)."""
    t = sorted(truth, key=lambda s: (s["startIndex"], s["endIndex"]))
    p = sorted(predicted, key=lambda s: (s["startIndex"], s["endIndex"]))
    out: list[tuple[str, str, int, int]] = []
    j = 0
    for seg in t:
        pos, end = seg["startIndex"], seg["endIndex"]
        while j < len(p) and p[j]["endIndex"] < pos:
            j += 1
        k = j
        while k < len(p) and p[k]["startIndex"] <= end and pos <= end:
            a, b = max(pos, p[k]["startIndex"]), min(end, p[k]["endIndex"])
            if a > pos:
                out.append((seg["label"], NO_LABEL, pos, a - 1))
            if b >= a:
                out.append((seg["label"], p[k]["label"], a, b))
                pos = b + 1
            k += 1
        if pos <= end:
            out.append((seg["label"], NO_LABEL, pos, end))
    return out


def _window_truth(truth: Sequence[dict[str, Any]], start: int, end: int) -> str | None:
    """The true label covering most of values ``start..end`` (None where none covers them)."""
    cover: dict[str, int] = {}
    for seg in truth:
        n = min(end, seg["endIndex"]) - max(start, seg["startIndex"]) + 1
        if n > 0:
            cover[seg["label"]] = cover.get(seg["label"], 0) + n
    return max(sorted(cover), key=lambda lab: cover[lab]) if cover else None


def window_thresholds(items: Sequence[Item], records: dict[int, list[tuple[int, dict[str, Any]]]],
                      target_precision: float | None) -> tuple[list[dict[str, Any]], list[Curve]]:
    """A block that records per window its best label and score (``windows`` with
    ``best: {label, score}``, ``otherLabel``, ``threshold: {param, value}``: audioset) gets
    the threshold that maximises F1 of the windows it labels (all but the other label), from
    those scores: at threshold t a window is its best label if that scores >= t, else other."""
    found: dict[tuple[int, str], tuple[float, list[tuple[float, bool]], int]] = {}
    truth_of = {it.id: it.truth["structuredLabels"] for it in items}
    for sid, recs in records.items():
        for step, rec in recs:
            windows, th = rec.get("windows"), rec.get("threshold")
            if not isinstance(windows, list) or not isinstance(th, dict) or "param" not in th:
                continue
            other = str(rec.get("otherLabel", "other"))
            value, scored, positives = found.get((step, th["param"]), (float(th.get("value", 0.0)), [], 0))
            for w in windows:
                best = w.get("best") if isinstance(w, dict) else None
                if not isinstance(best, dict):
                    continue
                true = _window_truth(truth_of.get(sid, []), int(w["startIndex"]), int(w["endIndex"]))
                if true is None:
                    continue
                positives += true != other
                if best["label"] != other:
                    scored.append((float(best["score"]), best["label"] == true))
            found[(step, th["param"])] = (value, scored, positives)
    out, curves = [], []
    for (step, param), (value, scored, positives) in sorted(found.items()):
        if not scored:
            continue
        curve, best_, reaching = sweep(np.array([s for s, _ in scored]), np.array([h for _, h in scored]),
                                       float(positives), target_precision)
        curve.key = param
        curves.append(curve)
        out.append(_threshold_item(param, "minimum score of a window's best class", value, best_, reaching,
                                   target_precision, step=step, param=param))
    return out, curves


def evaluate_segments(items: Sequence[Item], records: dict[int, list[tuple[int, dict[str, Any]]]],
                      job: job_store.JobRecord, compared: str, group_by: Sequence[str], min_group: int,
                      target_precision: float | None) -> Evaluation:
    """The audio-segment evaluation: per value (time) accuracy and confusion matrix, from the
    overlaps of true and predicted segments, weighted by their length in seconds."""
    ev = [it for it in items if it.frequency and it.truth["structuredLabels"]]
    if not ev:
        raise InvalidInput(f"none of job {job.id}'s selected audio samples has labeled segments to compare with: "
                           "label some (e.g. after review) or compare with another job (--against-job)")
    pieces = [overlaps(it.truth["structuredLabels"], it.predicted["structuredLabels"]) for it in ev]
    classes = sorted({lab for ps in pieces for t, p, _, _ in ps for lab in (t, p)})
    code = {c: i for i, c in enumerate(classes)}
    owner = np.repeat(np.arange(len(ev)), [len(ps) for ps in pieces])
    flat = [piece for ps in pieces for piece in ps]
    t = np.fromiter((code[x[0]] for x in flat), np.int64, len(flat))
    p = np.fromiter((code[x[1]] for x in flat), np.int64, len(flat))
    freq = np.array([it.frequency for it in ev], dtype=float)
    seconds = np.fromiter((x[3] - x[2] + 1 for x in flat), float, len(flat)) / freq[owner]
    correct_s = np.bincount(owner, seconds * (t == p), minlength=len(ev))
    total_s = np.bincount(owner, seconds, minlength=len(ev))
    hz = freq.tolist()
    predictions = [{"sampleId": ev[o].id, "startMs": a / hz[o] * 1000, "endMs": (b + 1) / hz[o] * 1000,
                    "label": tr, "prediction": pr,
                    "predictionCorrect": tr == pr, "f1Score": 1.0 if tr == pr else 0.0}
                   for o, (tr, pr, a, b) in zip(owner.tolist(), flat, strict=True)]

    k = len(classes)
    per_sample = np.bincount(owner * k * k + t * k + p, weights=seconds, minlength=len(ev) * k * k).reshape(-1, k, k)

    def measure(idx: np.ndarray) -> dict[str, Any]:
        sel = np.isin(owner, idx)
        m = label_metrics(t[sel], p[sel], classes, seconds[sel], present_only=True)
        return {"accuracy": m["accuracy"], "accuracyInterval": ratio_interval(correct_s[idx], total_s[idx]),
                "macroF1": m["report"]["macro avg"]["f1-score"],
                "macroF1Interval": macro_f1_interval(per_sample[idx], m["_shown"]),
                "confusionMatrix": m["confusionMatrix"], "report": m["report"], "seconds": float(total_s[idx].sum())}

    accuracy_i = np.where(total_s > 0, correct_s / np.maximum(total_s, 1e-300), 1.0)
    worst = [{"sampleId": ev[i].id, "truth": ev[i].truth["structuredLabels"],
              "prediction": ev[i].predicted["structuredLabels"], "score": float(accuracy_i[i]),
              "frequency": ev[i].frequency}
             for i in np.argsort(accuracy_i, kind="stable")[:WORST].tolist() if accuracy_i[i] < 1.0]
    thresholds, curves = window_thresholds(ev, records, target_precision)
    doc = {"success": True, "jobId": job.id, "task": "segments", "comparedWith": compared, "samples": len(ev),
           "seconds": float(total_s.sum()), "classes": classes, "notEvaluated": _not_evaluated(ev, "segments"),
           "thresholds": thresholds,
           "modelValidationMetrics": [_metrics_item(_public(label_metrics(t, p, classes, seconds)), predictions)],
           "groups": _groups(ev, group_by, measure, "accuracy", min_group)}
    return Evaluation(doc, curves, worst)
