"""Boxes: greedy matching at an IoU, mAP@50 with intervals, the COCO figures (faster-coco-eval),
the confusion matrix with a background row and column, and per-class score thresholds."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import InvalidInput
from ..store import jobs as job_store
from .core import (
    BACKGROUND,
    BOX_BOOTSTRAP,
    COCO_NAMES,
    REC_THRS,
    WORST,
    Curve,
    Evaluation,
    Item,
    groups_of,
    interval,
    metrics_item,
    not_evaluated,
)
from .suggestions import step_thresholds, sweep, threshold_item

# --- boxes ---------------------------------------------------------------------------------------------


def box_key(b: dict[str, Any]) -> tuple[Any, ...]:
    return (b["label"], b["x"], b["y"], b["width"], b["height"], b.get("score"))


def added_boxes(it: Item) -> list[dict[str, Any]]:
    """The boxes the job adds to the image: the ones it keeps from the sample are not
    predictions (the truth compared with itself means nothing). A stored box has no score,
    so a scored box the job proposes is a prediction even where it equals a stored one."""
    pred = it.predicted["boundingBoxes"]
    if pred is it.stored["boundingBoxes"]:
        return []
    kept = Counter(box_key(b) for b in it.stored["boundingBoxes"])
    out = []
    for b in pred:
        k = box_key(b)
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


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
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
        ious = iou_matrix(pred.xywh[pi], truth.xywh[tt])
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
        self.targets = (REC_THRS[None, :] + 2.0 * np.arange(n_classes)[:, None]).ravel()
        self.seg_end = np.repeat(self.starts[1:], REC_THRS.size)

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
        return interval(np.asarray([self.value(w) for w in draws]))


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


def near_misses(items: Sequence[Item], records: dict[int, list[tuple[int, dict[str, Any]]]]) -> list[list[dict]]:
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
        out.append(threshold_item(label, f"minimum score of a {label} box", current, best, reaching,
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
    n_lists = near_misses(imgs, records)
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
           "classes": [*classes, BACKGROUND], "notEvaluated": not_evaluated(imgs, "boxes"),
           "thresholds": thresholds, "modelValidationMetrics": [metrics_item(measured, predictions)],
           "groups": groups_of(imgs, group_by, measure, "mAP50", min_group)}
    if not scored:
        doc["thresholdsNote"] = ("nothing to tune: the job's boxes carry no scores (none of its steps records one, "
                                 "as a renaming step does not)")
    return Evaluation(doc, curves, worst)


