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

from .boxes import Boxes, Map50, box_thresholds, match
from .core import BACKGROUND, Evaluation, Item
from .evaluation import evaluate, run_evaluation
from .labels import label_metrics
from .suggestions import sweep

__all__ = ["BACKGROUND", "Boxes", "Evaluation", "Item", "Map50", "box_thresholds", "evaluate", "label_metrics", "match",
           "run_evaluation", "sweep"]
