"""Audio segments: time-weighted accuracy and confusion matrix from the overlaps of true and
predicted segments, and window-score thresholds."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..errors import InvalidInput
from ..store import jobs as job_store
from .core import (
    NO_LABEL,
    WORST,
    Curve,
    Evaluation,
    Item,
    groups_of,
    macro_f1_interval,
    metrics_item,
    not_evaluated,
    ratio_interval,
)
from .labels import label_metrics, public_metrics
from .suggestions import sweep, threshold_item

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


def window_truth(truth: Sequence[dict[str, Any]], start: int, end: int) -> str | None:
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
                true = window_truth(truth_of.get(sid, []), int(w["startIndex"]), int(w["endIndex"]))
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
        out.append(threshold_item(param, "minimum score of a window's best class", value, best_, reaching,
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
           "seconds": float(total_s.sum()), "classes": classes, "notEvaluated": not_evaluated(ev, "segments"),
           "thresholds": thresholds,
           "modelValidationMetrics": [metrics_item(public_metrics(label_metrics(t, p, classes, seconds)), predictions)],
           "groups": groups_of(ev, group_by, measure, "accuracy", min_group)}
    return Evaluation(doc, curves, worst)
