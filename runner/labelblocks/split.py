"""Leakage-free, stratified, deterministic and stable dataset splits.

Samples that share the values of every keep-together key (frames of one video, windows of one
night) form a group, and a group lands in one split. Groups are placed greedily, largest first:
each goes to the split whose deficit (of samples, and of every label and stratified key value,
relative to the target ratios) it fills best, among the splits that still have room for the
whole group. This keeps every split within one group's size of its target and the label
distributions close to the whole.

Deterministic: the order of equal-sized groups comes from a hash of their key values (or, for
a sample without them, of its id), never from Python's salted ``hash``.
Stable: every split records the samples it placed; a later split never moves them. New samples
of an already placed group join that group's split; only new groups are placed.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .errors import InvalidInput
from .filters import SampleFilter
from .model import CATEGORIES
from .store import Store
from .store.schema import pack_ids, split_runs, unpack_ids

NAMES = {"training": "train", "validation": "validation", "testing": "test"}
CATEGORY_INDEX = {c: i for i, c in enumerate(CATEGORIES)}
NONE_LABEL = "(no label)"
REFINE_PASSES = 1
MISSING = "(missing)"


@dataclass
class SplitOptions:
    ratios: tuple[float, float, float] = (0.8, 0.1, 0.1)  # training, validation, testing
    keep_together: Sequence[str] = ()
    stratify_label: bool = True
    stratify_keys: Sequence[str] = ()
    reassign: bool = False

    def check(self) -> None:
        for name, r in zip(("--train", "--validation", "--test"), self.ratios, strict=True):
            if not 0 <= r <= 1:
                raise InvalidInput(f"{name} {r}: a ratio is between 0 and 1")
        if abs(sum(self.ratios) - 1) > 1e-6:
            raise InvalidInput(f"the ratios add up to {sum(self.ratios):g}, not 1: "
                               f"--train {self.ratios[0]:g} --validation {self.ratios[1]:g} --test {self.ratios[2]:g}")

    def to_json(self) -> dict[str, Any]:
        return {"ratios": dict(zip(CATEGORIES, self.ratios, strict=True)), "keepTogether": list(self.keep_together),
                "stratifyLabel": self.stratify_label, "stratifyKeys": list(self.stratify_keys),
                "reassign": self.reassign}


@dataclass
class SplitData:
    """The selection as arrays: one entry per sample, in id order."""

    ids: np.ndarray  # int64
    category: np.ndarray  # index into CATEGORIES
    label: list[str]
    group: np.ndarray  # group index per sample
    group_names: list[str]  # per group; "" for a sample that lacks a keep-together key
    missing_key: int  # samples lacking a keep-together key (each its own group)
    key_values: dict[str, list[str]] = field(default_factory=dict)  # stratified keys' values per sample


def load(store: Store, f: SampleFilter, opts: SplitOptions) -> SplitData:
    rows = store.scan(f, "label", "category", "bounding_boxes")
    if not rows:
        raise InvalidInput("the selection has no samples: nothing to split")
    n = len(rows)
    ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=n)
    category = _category_codes(rows, 2).astype(np.int8)
    labels = [sample_label(r[1], r[3]) for r in rows]
    keys = key_values(store, dict.fromkeys([*opts.keep_together, *opts.stratify_keys]))
    group, names, missing = _groups(ids, opts.keep_together, keys)
    strat = {k: [keys[k].get(int(i), MISSING) for i in ids] for k in opts.stratify_keys}
    return SplitData(ids, category, labels, group, names, missing, strat)


def key_values(store: Store, keys: Iterable[str]) -> dict[str, dict[int, str]]:
    """{key: {sample id: value}}; a key that no sample has is an error."""
    out = {k: store.metadata_values(k) for k in keys}
    for k, values in out.items():
        if not values:
            raise InvalidInput(f"no sample has metadata key {k!r}: see `labelblocks metadata keys`")
    return out


def _category_codes(rows: Sequence[tuple[Any, ...]], col: int) -> np.ndarray:
    """Column ``col`` of scanned rows (a category name) as indexes into CATEGORIES."""
    return np.fromiter((CATEGORY_INDEX.get(r[col], 0) for r in rows), dtype=np.int64, count=len(rows))


def sample_label(label: str | None, boxes: str) -> str:
    """The label a sample counts under: its own, else its most frequent box label."""
    if label:
        return label
    if boxes and boxes != "[]":  # object detection: the most frequent box label stands for the sample
        counts = Counter(b["label"] for b in json.loads(boxes))
        return min(counts, key=lambda lab: (-counts[lab], lab))
    return NONE_LABEL


def _groups(ids: np.ndarray, keep: Sequence[str], keys: dict[str, dict[int, str]]) -> tuple[np.ndarray, list[str], int]:
    n = len(ids)
    if not keep:
        return np.arange(n), [""] * n, 0
    index: dict[str, int] = {}
    names: list[str] = []
    group = np.empty(n, dtype=np.int64)
    missing = 0
    maps = [keys[k] for k in keep]
    if len(maps) == 1:
        values = [maps[0].get(sid) for sid in ids.tolist()]
    else:
        values = [None if any(v is None for v in vs) else "\x1f".join(vs)  # type: ignore[arg-type]
                  for vs in zip(*([m.get(sid) for sid in ids.tolist()] for m in maps), strict=True)]
    for pos, name in enumerate(values):
        if name is None:
            missing += 1
            group[pos] = len(names)
            names.append("")
            continue
        g = index.get(name)
        if g is None:
            g = index[name] = len(names)
            names.append(name)
        group[pos] = g
    return group, names, missing


def _features(data: SplitData, opts: SplitOptions) -> tuple[np.ndarray, np.ndarray]:
    """(sample position, feature index) pairs of the stratified features."""
    pos: list[np.ndarray] = []
    feat: list[np.ndarray] = []
    offset = 0
    columns: list[list[str]] = ([data.label] if opts.stratify_label else []) + list(data.key_values.values())
    n = len(data.ids)
    for col in columns:
        index: dict[str, int] = {}
        codes = np.fromiter((index.setdefault(v, len(index)) for v in col), dtype=np.int64, count=n)
        pos.append(np.arange(n))
        feat.append(codes + offset)
        offset += len(index)
    if not pos:
        return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64)
    return np.concatenate(pos), np.concatenate(feat)


def _order_key(name: str, first_id: int) -> int:
    text = name if name else f"#{first_id}"
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")


def assign(data: SplitData, opts: SplitOptions, assigned: np.ndarray) -> np.ndarray:
    """The split (index into CATEGORIES) of every sample. ``assigned`` marks samples that an
    earlier split placed: they keep their category, and their groups stay where they are."""
    n = len(data.ids)
    k = len(CATEGORIES)
    ratios = np.asarray(opts.ratios, dtype=np.float64)
    n_groups = len(data.group_names)
    size = np.bincount(data.group, minlength=n_groups)
    result = np.full(n, -1, dtype=np.int64)

    # groups with placed samples: their split is the (most common) category of those samples
    fixed_split = np.full(n_groups, -1, dtype=np.int64)
    if assigned.any():
        a_groups = data.group[assigned]
        a_cats = data.category[assigned].astype(np.int64)
        votes = np.zeros((n_groups, k), dtype=np.int64)
        np.add.at(votes, (a_groups, a_cats), 1)
        has = votes.sum(axis=1) > 0
        fixed_split[has] = votes[has].argmax(axis=1)
        result[assigned] = a_cats
        rest = ~assigned & (fixed_split[data.group] >= 0)
        result[rest] = fixed_split[data.group[rest]]

    # feature counts per group, sorted by group
    spos, sfeat = _features(data, opts)
    n_feat = int(sfeat.max()) + 1 if len(sfeat) else 0
    gf_feat: np.ndarray
    counts: np.ndarray
    totals: np.ndarray
    bounds: np.ndarray
    if n_feat:
        combined = data.group[spos] * n_feat + sfeat
        uniq, counts = np.unique(combined, return_counts=True)
        gf_group, gf_feat = uniq // n_feat, uniq % n_feat
        totals = np.bincount(gf_feat, weights=counts, minlength=n_feat)
        bounds = np.searchsorted(gf_group, np.arange(n_groups + 1))
    else:
        gf_feat = np.empty(0, dtype=np.int64)
        counts = np.empty(0, dtype=np.int64)
        totals = np.empty(0)
        bounds = np.zeros(n_groups + 1, dtype=np.int64)
    # objective: sum over splits and features of split_w * weight * deficit^2. Each feature's
    # deficit is relative to its total (rare labels count), and small splits weigh more
    # (1/sqrt(ratio): tuned on generated data against StratifiedGroupKFold, see tests/test_split.py)
    weights = 1.0 / np.maximum(totals, 1)
    split_w = 1.0 / np.sqrt(np.maximum(ratios, 1e-3))

    # deficits: what each split still lacks of each feature and of samples
    deficit = ratios[:, None] * totals[None, :]
    room = ratios * n
    placed = result >= 0
    if placed.any():
        np.subtract.at(room, result[placed], 1)
        if n_feat:
            mask = placed[spos]
            np.subtract.at(deficit, (result[spos[mask]], sfeat[mask]), 1)

    free = np.flatnonzero(fixed_split < 0)
    first_pos = np.full(n_groups, n, dtype=np.int64)
    np.minimum.at(first_pos, data.group, np.arange(n))
    tie = [_order_key(data.group_names[g], int(data.ids[first_pos[g]])) for g in free.tolist()]
    order = sorted(range(len(free)), key=lambda i: (-int(size[free[i]]), tie[i]))

    group_split = np.full(n_groups, -1, dtype=np.int64)
    size_w = 1.0 / max(n, 1)
    for i in order:
        g = int(free[i])
        sz = float(size[g])
        lo, hi = bounds[g], bounds[g + 1]
        fs = gf_feat[lo:hi]
        cost = size_w * sz * (sz - 2 * room)
        if hi > lo:
            c = counts[lo:hi]
            wc = c * weights[fs]
            cost = cost + (wc @ c - 2 * (deficit[:, fs] @ wc))
        cost = cost * split_w
        fits = room >= sz
        s = int(np.argmin(np.where(fits, cost, np.inf))) if fits.any() else int(np.argmax(room))
        group_split[g] = s
        room[s] -= sz
        if hi > lo:
            deficit[s, fs] -= counts[lo:hi]
    # one pass of single-group moves, smallest groups first, each taken only if it lowers the
    # total squared deficit and keeps every split within one (largest) group of its target
    limit = float(size.max()) if n_groups else 0.0
    for _ in range(REFINE_PASSES):
        if not _refine_pass(order, free, group_split, size, bounds, gf_feat, counts, weights, split_w, deficit, room,
                            size_w, limit, ratios > 0):
            break
    todo = result < 0
    result[todo] = group_split[data.group[todo]]
    return result


def _refine_pass(order: list[int], free: np.ndarray, group_split: np.ndarray, size: np.ndarray, bounds: np.ndarray,
                 gf_feat: np.ndarray, counts: np.ndarray, weights: np.ndarray, split_w: np.ndarray,
                 deficit: np.ndarray, room: np.ndarray, size_w: float, limit: float, open_split: np.ndarray) -> int:
    """``open_split``: splits that may receive a group (a split of ratio 0 never does)."""
    moved = 0
    for i in reversed(order):
        g = int(free[i])
        s = int(group_split[g])
        sz = float(size[g])
        lo, hi = bounds[g], bounds[g + 1]
        fs = gf_feat[lo:hi]
        c = counts[lo:hi]
        # change of the objective when moving g from s to t: what adding it to t costs plus
        # what removing it from s costs
        add = size_w * sz * (sz - 2 * room)
        remove = size_w * sz * (sz + 2 * room[s])
        if hi > lo:
            wc = c * weights[fs]
            wcc = float(wc @ c)
            add = add + (wcc - 2 * (deficit[:, fs] @ wc))
            remove = remove + (wcc + 2 * float(deficit[s, fs] @ wc))
        delta = add * split_w + remove * split_w[s]
        ok = (np.abs(room - sz) <= limit) & (abs(room[s] + sz) <= limit) & open_split
        ok[s] = False
        if not ok.any():
            continue
        t = int(np.argmin(np.where(ok, delta, np.inf)))
        if delta[t] < -1e-12:
            group_split[g] = t
            room[s] += sz
            room[t] -= sz
            if hi > lo:
                deficit[s, fs] += c
                deficit[t, fs] -= c
            moved += 1
    return moved


# --- store ------------------------------------------------------------------------------------


def assigned_ids(store: Store) -> set[int]:
    out: set[int] = set()
    with store.engine.connect() as conn:
        for (blob,) in conn.execute(split_runs.select().with_only_columns(split_runs.c.sample_ids)):
            out.update(unpack_ids(blob))
    return out


def write(store: Store, data: SplitData, result: np.ndarray, newly: np.ndarray, opts: SplitOptions) -> int:
    """Store the categories and record the placed samples, in one transaction. Returns how
    many samples changed category."""
    changed = np.flatnonzero(result != data.category)
    now = time.time()
    with store.transaction() as conn:
        if len(changed):
            conn.exec_driver_sql("CREATE TEMP TABLE IF NOT EXISTS split_new (id INTEGER PRIMARY KEY, category TEXT)")
            conn.exec_driver_sql("DELETE FROM split_new")
            conn.exec_driver_sql("INSERT INTO split_new (id, category) VALUES (?, ?)",
                                 list(zip(data.ids[changed].tolist(),
                                          [CATEGORIES[c] for c in result[changed].tolist()], strict=True)))
            conn.exec_driver_sql("UPDATE samples SET category = split_new.category, updated_at = ? "
                                 "FROM split_new WHERE samples.id = split_new.id", (now,))
            conn.exec_driver_sql("DELETE FROM split_new")
        if newly.any():
            conn.execute(split_runs.insert().values(options=json.dumps(opts.to_json()),
                                                    sample_ids=pack_ids(data.ids[newly].tolist()), created_at=now))
    return len(changed)


# --- summaries and leakage --------------------------------------------------------------------


def summary(data: SplitData, result: np.ndarray) -> dict[str, Any]:
    out: dict[str, Any] = {}
    n = len(data.ids)
    for s, cat in enumerate(CATEGORIES):
        mask = result == s
        m = int(mask.sum())
        sel = np.flatnonzero(mask).tolist()
        groups = len(np.unique(data.group[mask])) if m else 0
        labels = Counter(data.label[i] for i in sel)
        keys = {k: dict(Counter(v[i] for i in sel).most_common()) for k, v in data.key_values.items()}
        out[cat] = {"samples": m, "share": m / n if n else 0.0, "groups": groups,
                    "labels": dict(sorted(labels.items())), "keys": keys}
    return out


@dataclass
class Leak:
    group: str
    counts: dict[str, int]

    def to_json(self) -> dict[str, Any]:
        return {"group": self.group, "counts": self.counts}


def leaks(store: Store, f: SampleFilter, keep: Sequence[str]) -> list[Leak]:
    """Groups (by the keep-together keys) whose samples sit in more than one split, as stored."""
    if not keep:
        raise InvalidInput("say which key keeps samples together: --keep-together KEY")
    rows = store.scan(f, "category")
    if not rows:
        return []
    ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
    group, names, _ = _groups(ids, keep, key_values(store, keep))
    return _leaks_in(group, names, _category_codes(rows, 1), keep)


def _stored_leaks(store: Store, f: SampleFilter, data: SplitData, keep: Sequence[str]) -> list[Leak]:
    """The leakage check after writing: the categories as the store now holds them, with the
    groups just computed (samples added since by another process are left out)."""
    rows = store.scan(f, "category")
    ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
    pos = np.searchsorted(data.ids, ids).clip(0, len(data.ids) - 1)
    known = data.ids[pos] == ids
    return _leaks_in(data.group[pos[known]], data.group_names, _category_codes(rows, 1)[known], keep)


def _leaks_in(group: np.ndarray, names: list[str], category: np.ndarray, keep: Sequence[str]) -> list[Leak]:
    k = len(CATEGORIES)
    counts = np.bincount(group * k + category, minlength=len(names) * k).reshape(len(names), k)
    spread = np.flatnonzero((counts > 0).sum(axis=1) > 1)
    out = []
    for g in spread.tolist():
        if not names[g]:  # a sample without the keys is its own group
            continue
        label = ", ".join(f"{key}={v}" for key, v in zip(keep, names[g].split("\x1f"), strict=True))
        out.append(Leak(label, {CATEGORIES[c]: int(counts[g, c]) for c in range(k) if counts[g, c]}))
    return sorted(out, key=lambda lk: lk.group)


def run_split(store: Store, f: SampleFilter, opts: SplitOptions, dry_run: bool) -> dict[str, Any]:
    """Plan (and unless ``dry_run``, store) a split; returns the report."""
    opts.check()
    data = load(store, f, opts)
    before = assigned_ids(store) if not opts.reassign else set()
    assigned = np.fromiter((int(i) in before for i in data.ids.tolist()), dtype=bool, count=len(data.ids)) \
        if before else np.zeros(len(data.ids), dtype=bool)
    result = assign(data, opts, assigned)
    newly = ~assigned
    changed = write(store, data, result, newly, opts) if not dry_run else int((result != data.category).sum())
    report: dict[str, Any] = {
        "dryRun": dry_run, **opts.to_json(), "samples": len(data.ids), "groups": len(data.group_names),
        "missingKey": data.missing_key, "kept": int(assigned.sum()), "placed": int(newly.sum()),
        "changed": changed, "splits": summary(data, result),
    }
    if opts.keep_together:
        # the leakage check: on what the store now holds (after a dry run, on the plan)
        found = _stored_leaks(store, f, data, opts.keep_together) if not dry_run else \
            _leaks_in(data.group, data.group_names, result, opts.keep_together)
        report["leaks"] = [lk.to_json() for lk in found]
    return report
