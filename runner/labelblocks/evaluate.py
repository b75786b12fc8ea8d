"""Evaluating a job: its proposals (the predictions) against the samples' labels or another
job's proposals (the truth), overall and grouped by metadata, in the protocol's block-metadata
shape (``modelValidationMetrics`` items as its bindings read them).

A sample's prediction is the sample as the job would leave it: its steps' proposals composed
and applied, so a block that leaves a label as it is predicts that label. Single labels are
evaluated with scikit-learn (accuracy, the confusion matrix, its classification report, a 95%
bootstrap interval per group), boxes with faster-coco-eval (COCO figures) and a matching at an
IoU (per-class precision / recall / F1, a confusion matrix with a background row and column);
audio segments are not yet.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol, TypeVar

from .errors import InvalidInput, NotFound
from .filters import SampleFilter
from .model import BoundingBox, Sample, compose
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


class _Evaluated(Protocol):
    sample: Sample


E = TypeVar("E", bound=_Evaluated)


def _check_job(store: Store, job_id: int) -> None:
    if job_store.get_job(store, job_id) is None:
        raise NotFound(f"no job {job_id}: see `labelblocks jobs list`")


def _predicted(store: Store, job_id: int, samples: Sequence[Sample]) -> dict[int, Sample]:
    """Each sample as the job would leave it (every step's proposal applied)."""
    changes = job_store.read_proposals(store, job_id, [s.id for s in samples])
    return {s.id: s.with_change(compose(changes[s.id])) if s.id in changes else s for s in samples}


def _job_samples(store: Store, job_id: int, f: SampleFilter | None) -> list[Sample]:
    ids = job_store.job_sample_ids(store, job_id)
    if f is not None:
        ids = store.select_ids(f.model_copy(update={"ids": ids}))
    return store.get_samples(ids, missing_ok=True)


def pairs(samples: Sequence[Sample], predicted: dict[int, Sample], truth: dict[int, Sample], job_id: int) -> list[Pair]:
    """The samples with a true label (``truth``: each sample as stored, or as another job
    would leave it), each with the label the job predicts."""
    out = [Pair(s, predicted[s.id].label or "", truth[s.id].label or "") for s in samples if truth[s.id].label]
    if not out:
        raise InvalidInput(f"none of job {job_id}'s selected samples has a label to compare with: label some "
                           "(e.g. after review) or compare with another job (--against-job); boxes and audio "
                           "segments are not evaluated yet")
    return out


def unevaluated(samples: Sequence[Sample], predicted: dict[int, Sample]) -> list[str]:
    """What the job changes that this evaluation does not cover (boxes, audio segments)."""
    out = []
    if any(predicted[s.id].bounding_boxes != s.bounding_boxes for s in samples):
        out.append("boundingBoxes")
    if any(predicted[s.id].structured_labels != s.structured_labels for s in samples):
        out.append("structuredLabels")
    return out


def _grouped(items: Sequence[E], key: str) -> dict[str, list[E]]:
    """``items`` by their sample's value of metadata ``key`` (NO_VALUE without it)."""
    if not any(key in i.sample.metadata for i in items):
        raise InvalidInput(f"--group-by {key}: no evaluated sample has the metadata key {key!r} "
                           "(see `labelblocks metadata keys`)")
    out: dict[str, list[E]] = {}
    for i in items:
        out.setdefault(i.sample.metadata.get(key, NO_VALUE), []).append(i)
    return out


def _groups(items: Sequence[E], group_by: Sequence[str], measure: Callable[[list[E]], dict[str, Any]],
            worst: str, min_group: int) -> list[dict[str, Any]]:
    """Per ``group_by`` key, ``measure`` of each value's items, the worst (lowest ``worst``) first."""
    out = []
    for key in group_by:
        values = [{"value": value, "samples": len(members), **measure(members), "tooSmall": len(members) < min_group}
                  for value, members in _grouped(items, key).items()]
        values.sort(key=lambda v: (v[worst], v["value"]))
        out.append({"key": key, "values": values})
    return out


def _metrics_item(measured: dict[str, Any], predictions: list[dict[str, Any]]) -> dict[str, Any]:
    """A ``modelValidationMetrics`` item of the protocol, with what its bindings require."""
    return {"type": "float32", "loss": 0.0, "additionalMetrics": [], **measured, "onDevicePerformance": [],
            "predictions": predictions, "visualization": "none", "isSupportedOnMcu": False}


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
             f: SampleFilter | None = None, min_group: int = MIN_GROUP, save: bool = True,
             iou: float = 0.5, target_precision: float | None = None) -> dict[str, Any]:
    """The job's evaluation document: ``modelValidationMetrics`` (one item, the protocol's
    shape, with per-sample ``predictions``) and, per ``group_by`` key, every value's metrics,
    the worst first. A job that adds boxes is evaluated on its boxes (COCO figures through
    faster-coco-eval, matches at ``iou``), else on single labels. Stored as the job's
    evaluation unless ``save`` is False."""
    _check_job(store, job_id)
    if against_job is not None:
        _check_job(store, against_job)
    if not job_store.has_proposals(store, job_id):
        raise InvalidInput(f"job {job_id} has no proposals: there is nothing to evaluate")
    samples = _job_samples(store, job_id, f)
    predicted = _predicted(store, job_id, samples)
    truth = {s.id: s for s in samples} if against_job is None else _predicted(store, against_job, samples)
    bps = box_pairs(samples, predicted, truth)
    if any(bp.predicted for bp in bps):
        doc = evaluate_boxes(bps, job_id, against_job, group_by, min_group, iou, target_precision)
    else:
        doc = evaluate_labels(samples, predicted, truth, job_id, against_job, group_by, min_group)
    if save:
        doc["created"] = datetime.fromtimestamp(save_evaluation(store, job_id, doc), tz=UTC).isoformat()
    return doc


def evaluate_labels(samples: Sequence[Sample], predicted: dict[int, Sample], truth: dict[int, Sample], job_id: int,
                    against_job: int | None, group_by: Sequence[str], min_group: int) -> dict[str, Any]:
    """The single-label evaluation document."""
    ps = pairs(samples, predicted, truth, job_id)
    classes = sorted({p.truth for p in ps} | {p.prediction for p in ps})
    predictions = [{"sampleId": p.sample.id, "startMs": 0.0, "endMs": float(p.sample.total_length_ms or 0.0),
                    "label": p.truth, "prediction": p.prediction, "predictionCorrect": p.truth == p.prediction,
                    "f1Score": 1.0 if p.truth == p.prediction else 0.0} for p in ps]

    def measure(members: list[Pair]) -> dict[str, Any]:
        m = metrics(members, classes)
        lo, hi = bootstrap_interval([p.truth == p.prediction for p in members])
        return {"accuracy": m["accuracy"], "accuracyInterval": [lo, hi],
                "macroF1": m["report"]["macro avg"]["f1-score"], "confusionMatrix": m["confusionMatrix"],
                "report": m["report"]}

    compared = f"job {against_job}'s proposals" if against_job is not None else "the samples' labels"
    return {"success": True, "jobId": job_id, "task": "single-label", "comparedWith": compared,
            "samples": len(ps), "classes": classes, "notEvaluated": unevaluated([p.sample for p in ps], predicted),
            "thresholds": [], "modelValidationMetrics": [_metrics_item(metrics(ps, classes), predictions)],
            "groups": _groups(ps, group_by, measure, "accuracy", min_group)}


# --- boxes ---------------------------------------------------------------------------------------------

COCO_NAMES = ("mAP", "mAP@[IoU=50]", "mAP@[IoU=75]", "mAP@[area=small]", "mAP@[area=medium]", "mAP@[area=large]",
              "Recall@[max_detections=1]", "Recall@[max_detections=10]", "Recall@[max_detections=100]",
              "Recall@[area=small]", "Recall@[area=medium]", "Recall@[area=large]")


@dataclass
class BoxPair:
    """One evaluated image: its true boxes and the boxes the job predicts for it."""

    sample: Sample
    truth: list[BoundingBox]
    predicted: list[BoundingBox]


def _box_key(b: BoundingBox) -> tuple[str, int, int, int, int]:
    return (b.label, b.x, b.y, b.width, b.height)


def box_pairs(samples: Sequence[Sample], predicted: dict[int, Sample], truth: dict[int, Sample]) -> list[BoxPair]:
    """The images with their true boxes (``truth``: as stored, or as another job leaves them)
    and the boxes the job adds: boxes it keeps from the sample are not predictions (the truth
    compared with itself means nothing)."""
    out = []
    for s in samples:
        if s.width is None:
            continue
        kept = {_box_key(b) for b in s.bounding_boxes}
        out.append(BoxPair(s, truth[s.id].bounding_boxes,
                           [b for b in predicted[s.id].bounding_boxes if _box_key(b) not in kept]))
    return out


def _score(b: BoundingBox) -> float:
    return float(b.score) if b.score is not None else 1.0


def _iou(a: BoundingBox, b: BoundingBox) -> float:
    ix = max(0, min(a.x + a.width, b.x + b.width) - max(a.x, b.x))
    iy = max(0, min(a.y + a.height, b.y + b.height) - max(a.y, b.y))
    inter = ix * iy
    union = a.width * a.height + b.width * b.height - inter
    return inter / union if union else 0.0


def match(truth: Sequence[BoundingBox], predicted: Sequence[BoundingBox],
          iou: float) -> tuple[list[tuple[int, int]], list[int], list[int]]:
    """Greedy matching of one image's boxes, the highest-scored prediction first, each to the
    unmatched true box of largest IoU >= ``iou`` (any class: a wrong class is a confusion):
    (matched (truth, prediction) index pairs, unmatched truth, unmatched predictions)."""
    order = sorted(range(len(predicted)), key=lambda i: -_score(predicted[i]))
    free = set(range(len(truth)))
    pairs_: list[tuple[int, int]] = []
    lonely: list[int] = []
    for i in order:
        best, best_iou = None, iou
        for t in free:
            v = _iou(truth[t], predicted[i])
            if v >= best_iou:
                best, best_iou = t, v
        if best is None:
            lonely.append(i)
        else:
            free.discard(best)
            pairs_.append((best, i))
    return pairs_, sorted(free), lonely


def coco_stats(bps: Sequence[BoxPair], classes: Sequence[str]) -> list[float]:
    """The 12 COCO detection figures (COCO_NAMES) of the predictions, by faster-coco-eval."""
    from faster_coco_eval import COCO, COCOeval_faster

    cat = {c: i + 1 for i, c in enumerate(classes)}
    images: list[dict[str, Any]] = []
    anns: list[dict[str, Any]] = []
    dets: list[dict[str, Any]] = []
    for bp in bps:
        images.append({"id": bp.sample.id, "width": bp.sample.width, "height": bp.sample.height})
        for b in bp.truth:
            anns.append({"id": len(anns) + 1, "image_id": bp.sample.id, "category_id": cat[b.label],
                         "bbox": [b.x, b.y, b.width, b.height], "area": b.width * b.height, "iscrowd": 0})
        for b in bp.predicted:
            dets.append({"image_id": bp.sample.id, "category_id": cat[b.label], "bbox": [b.x, b.y, b.width, b.height],
                         "score": _score(b)})
    gt = COCO()
    gt.dataset = {"images": images, "annotations": anns, "categories": [{"id": i, "name": c} for c, i in cat.items()]}
    gt.createIndex()
    if not dets:
        return [0.0] * len(COCO_NAMES)
    e = COCOeval_faster(gt, gt.loadRes(dets), "bbox", print_function=lambda *a, **k: None)
    e.evaluate()
    e.accumulate()
    e.summarize()
    return [max(0.0, float(v)) for v in e.stats[: len(COCO_NAMES)]]


def box_metrics(bps: Sequence[BoxPair], classes: Sequence[str], iou: float) -> dict[str, Any]:
    """COCO figures, per-class precision / recall / F1 at ``iou`` (the block's own thresholds:
    its proposals are what it kept) and a confusion matrix with a background row and column."""
    names = [*classes, "background"]
    index = {c: i for i, c in enumerate(names)}
    cm = [[0.0] * len(names) for _ in names]
    for bp in bps:
        matched, lost, extra = match(bp.truth, bp.predicted, iou)
        for t, p in matched:
            cm[index[bp.truth[t].label]][index[bp.predicted[p].label]] += 1
        for t in lost:
            cm[index[bp.truth[t].label]][index["background"]] += 1
        for p in extra:
            cm[index["background"]][index[bp.predicted[p].label]] += 1
    report: dict[str, Any] = {}
    for i, c in enumerate(classes):
        tp = cm[i][i]
        predicted_n = sum(cm[r][i] for r in range(len(names)))
        true_n = sum(cm[i])
        precision = tp / predicted_n if predicted_n else 0.0
        recall = tp / true_n if true_n else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        report[c] = {"precision": precision, "recall": recall, "f1-score": f1, "support": true_n}
    stats = coco_stats(bps, classes)
    return {"confusionMatrix": cm, "report": report, "accuracy": stats[1],
            "additionalMetrics": [{"name": n, "value": f"{v:.3f}", "fullPrecisionValue": v}
                                  for n, v in zip(COCO_NAMES, stats, strict=True)]}


def suggest_thresholds(bps: Sequence[BoxPair], classes: Sequence[str], iou: float,
                       target_precision: float | None = None) -> list[dict[str, Any]]:
    """Per class, the minimum score that maximises F1 against the truth, from the recorded
    scores alone (the model is not run again); with ``target_precision``, also the lowest one
    that reaches it. The protocol's ``thresholds``.

    One matching per class is enough: it takes predictions by descending score, so dropping
    those under a threshold leaves the matches of the others as they were, and precision and
    recall at every threshold follow from counts accumulated in score order."""
    out = []
    for label in classes:
        scored: list[tuple[float, bool]] = []  # (score, matched) of every prediction of the class
        n_true = 0
        for bp in bps:
            truth = [b for b in bp.truth if b.label == label]
            pred = [b for b in bp.predicted if b.label == label]
            n_true += len(truth)
            if pred:
                matched = {p for _, p in match(truth, pred, iou)[0]}
                scored += [(_score(b), i in matched) for i, b in enumerate(pred)]
        if not scored:
            continue
        scored.sort(key=lambda x: -x[0])
        at: dict[float, tuple[int, int]] = {}  # threshold -> (predictions kept, true positives)
        tp = 0
        for kept, (score, is_tp) in enumerate(scored, 1):
            tp += is_tp
            at[score] = (kept, tp)  # the last of equal scores holds all of them
        best: tuple[float, float, float, float] | None = None  # (f1, threshold, precision, recall)
        reaching: float | None = None
        for t in sorted(at):
            kept, tp = at[t]
            precision = tp / kept
            recall = tp / n_true if n_true else 0.0
            f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
            if best is None or f1 > best[0]:
                best = (f1, t, precision, recall)
            if target_precision is not None and reaching is None and precision >= target_precision:
                reaching = t
        assert best is not None
        f1, t, precision, recall = best
        item: dict[str, Any] = {
            "key": label, "description": f"minimum score of a {label} box",
            "helpText": "the threshold that maximises F1 against the truth, from the job's recorded scores",
            "value": min(at), "suggestedValue": t,
            "suggestedValueText": f"F1 {f1:.2f} (precision {precision:.2f}, recall {recall:.2f}) at {t:.3f}"}
        if target_precision is not None:
            item["targetPrecision"] = target_precision
            item["targetPrecisionValue"] = reaching
        out.append(item)
    return out


def evaluate_boxes(bps: Sequence[BoxPair], job_id: int, against_job: int | None, group_by: Sequence[str],
                   min_group: int, iou: float, target_precision: float | None = None) -> dict[str, Any]:
    """The box evaluation document (``accuracy`` is mAP@50, as the protocol reports it)."""
    if not 0 < iou <= 1:
        raise InvalidInput(f"--iou: expected a number in (0, 1], got {iou}")
    if not any(bp.truth for bp in bps):
        raise InvalidInput(f"none of job {job_id}'s selected images has boxes to compare with: select reviewed ones "
                           "or compare with another job (--against-job)")
    classes = sorted({b.label for bp in bps for b in [*bp.truth, *bp.predicted]})
    predictions = [{"sampleId": bp.sample.id, "startMs": 0.0, "endMs": 0.0, "prediction": "",
                    "boundingBoxes": [{"label": b.label, "x": b.x / (bp.sample.width or 1),
                                       "y": b.y / (bp.sample.height or 1), "width": b.width / (bp.sample.width or 1),
                                       "height": b.height / (bp.sample.height or 1), "score": _score(b)}
                                      for b in bp.predicted]}
                   for bp in bps]

    def measure(members: list[BoxPair]) -> dict[str, Any]:
        m = box_metrics(members, classes, iou)
        return {"mAP50": m["accuracy"], "confusionMatrix": m["confusionMatrix"], "report": m["report"]}

    return {"success": True, "jobId": job_id, "task": "boxes", "iou": iou, "samples": len(bps),
            "comparedWith": "the boxes the job adds, against " + (
                f"job {against_job}'s boxes" if against_job is not None else "the samples' boxes"),
            "classes": [*classes, "background"], "notEvaluated": [],
            "thresholds": suggest_thresholds(bps, classes, iou, target_precision),
            "modelValidationMetrics": [_metrics_item(box_metrics(bps, classes, iou), predictions)],
            "groups": _groups(bps, group_by, measure, "mAP50", min_group)}
