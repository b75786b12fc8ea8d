"""Metadata statistics: counts per value (numeric values binned), per label or split, and
co-occurrence of two keys' values."""

from __future__ import annotations

import math
from collections import Counter
from typing import Any

from .filters import SampleFilter
from .split import MISSING, key_values, sample_label
from .store import Store

NUMERIC_BINS = 10
NUMERIC_MIN_DISTINCT = 20  # numeric keys with more distinct values than this are binned


def _as_float(v: str) -> float | None:
    try:
        x = float(v)
    except ValueError:
        return None
    return x if math.isfinite(x) else None


def _binner(present: list[str]) -> tuple[list[str], Any] | None:
    """If every value is a number and there are many distinct ones: bin names and a function
    value -> bin name (equal-width bins)."""
    nums = [_as_float(v) for v in set(present)]
    if len(nums) <= NUMERIC_MIN_DISTINCT or any(x is None for x in nums):
        return None
    lo, hi = min(nums), max(nums)  # type: ignore[type-var]
    assert lo is not None and hi is not None
    width = (hi - lo) / NUMERIC_BINS
    edges = [lo + i * width for i in range(NUMERIC_BINS + 1)]
    names = [f"[{edges[i]:.4g}, {edges[i + 1]:.4g}{']' if i == NUMERIC_BINS - 1 else ')'}" for i in range(NUMERIC_BINS)]

    def bin_of(v: str) -> str:
        x = float(v)
        i = min(int((x - lo) / width), NUMERIC_BINS - 1) if width else 0
        return names[i]

    return names, bin_of


def value_stats(store: Store, key: str, f: SampleFilter, by_label: bool = False, by_split: bool = False) -> dict[str, Any]:
    rows = store.scan(f, "label", "category", "bounding_boxes")
    values = key_values(store, [key])[key]
    per_sample = [values.get(r[0]) for r in rows]
    present = [v for v in per_sample if v is not None]
    binned = _binner(present)
    if binned:
        names, bin_of = binned
        shown = [bin_of(v) if v is not None else MISSING for v in per_sample]
    else:
        shown = [v if v is not None else MISSING for v in per_sample]
    counts = Counter(shown)
    order = ([b for b in names if b in counts] + ([MISSING] if MISSING in counts else [])) if binned else \
        sorted(counts, key=lambda v: (v == MISSING, -counts[v], v))
    labels: dict[str, Counter[str]] = {}
    splits: dict[str, Counter[str]] = {}
    for r, v in zip(rows, shown, strict=True):
        if by_label:
            labels.setdefault(v, Counter())[sample_label(r[1], r[3])] += 1
        if by_split:
            splits.setdefault(v, Counter())[r[2]] += 1
    n = len(rows)
    out_values = []
    for v in order:
        item: dict[str, Any] = {"value": v, "count": counts[v], "share": counts[v] / n if n else 0.0}
        if by_label:
            item["labels"] = dict(sorted(labels[v].items()))
        if by_split:
            item["splits"] = dict(sorted(splits[v].items()))
        out_values.append(item)
    return {"key": key, "samples": n, "missing": counts.get(MISSING, 0), "binned": bool(binned),
            "values": out_values}


def cooccurrence(store: Store, key_a: str, key_b: str, f: SampleFilter) -> dict[str, Any]:
    rows = store.scan(f)
    values = key_values(store, [key_a, key_b])
    a, b = values[key_a], values[key_b]
    table: dict[str, Counter[str]] = {}
    for (sid,) in rows:
        table.setdefault(a.get(sid, MISSING), Counter())[b.get(sid, MISSING)] += 1
    return {"keys": [key_a, key_b], "samples": len(rows),
            "counts": {va: dict(sorted(c.items())) for va, c in sorted(table.items())}}
