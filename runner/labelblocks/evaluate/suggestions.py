"""Score-threshold suggestions: the sweep over recorded scores, the threshold items in the
protocol's shape, each step's current threshold and the `actions set` commands that apply them."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..store import jobs as job_store
from .core import Curve


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
    from ..errors import LabelblocksError
    from ..plugins import get_registry

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


def threshold_item(key: str, description: str, value: float, best: tuple[float, float, float, float],
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


def step_thresholds(job: job_store.JobRecord, thresholds: list[dict[str, Any]]) -> None:
    """Each box threshold's current value as the step that proposes that label set it
    (Block.threshold_value: owlvit's prompt line), instead of the lowest score it proposed."""
    from ..errors import LabelblocksError
    from ..plugins import get_registry

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


