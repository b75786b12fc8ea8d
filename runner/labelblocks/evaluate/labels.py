"""Single labels: accuracy, the confusion matrix and its classification report (scikit-learn)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..errors import InvalidInput
from .core import WORST, Evaluation, Item, confusion_intervals, groups_of, metrics_item, not_evaluated

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


def public_metrics(m: dict[str, Any]) -> dict[str, Any]:
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
           "samples": len(ev), "classes": classes, "notEvaluated": not_evaluated(ev, "single-label"),
           "thresholds": [], "modelValidationMetrics": [metrics_item(public_metrics(label_metrics(t, p, classes)),
                                                                      predictions)],
           "groups": groups_of(ev, group_by, measure, "accuracy", min_group)}
    return Evaluation(doc, worst=worst)


