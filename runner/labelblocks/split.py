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
import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from operator import mul
from typing import Any

import numpy as np
from sqlalchemy import Connection

from .errors import InvalidInput
from .filters import SampleFilter
from .model import CATEGORIES
from .store import Store
from .store import split as split_store
from .store.split import SEP

NAMES = {"training": "train", "validation": "validation", "testing": "test"}
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
    key_values: dict[str, Sequence[str]] = field(default_factory=dict)  # stratified keys' values per sample
    # the same columns as codes into names, where the loader has them: {column: (codes, names)}
    codes: dict[str, tuple[np.ndarray, list[str]]] = field(default_factory=dict)

    def coded(self, column: str) -> tuple[np.ndarray, list[str]]:
        """``column`` (LABEL or a stratified key) as (int64 code per sample, names)."""
        if column not in self.codes:
            self.codes[column] = factorize(self.label if column == LABEL else self.key_values[column])
        return self.codes[column]


LABEL = "\x00label"  # the label's column in SplitData.codes (no metadata key starts with NUL)


def factorize(values: Sequence[Any]) -> tuple[np.ndarray, list[Any]]:
    """(int64 code of each value, the distinct values in order of first appearance)."""
    names = list(dict.fromkeys(values))
    index = {v: i for i, v in enumerate(names)}
    return np.fromiter(map(index.__getitem__, values), dtype=np.int64, count=len(values)), names


def load(store: Store, f: SampleFilter, opts: SplitOptions, conn: Connection | None = None) -> SplitData:
    """The selection's categories, labels and keys, read in a few scans (``conn``: inside the
    caller's transaction)."""
    if conn is None:
        with split_store.connection(store, write=False) as c:
            return load(store, f, opts, c)
    where = store.where(f)
    scanned = split_store.scan(conn, where, labels=True)
    if scanned is None:
        raise InvalidInput("the selection has no samples: nothing to split")
    ids, category, order, (label_text,) = scanned
    labels = label_text.split(SEP)
    if len(labels) != len(ids):  # a label with the separator in it: read them row by row
        rows = split_store.labels_by_id(conn, where)
        labels = [rows[i] for i in ids.tolist()]
    elif not (order == np.arange(len(ids))).all():
        labels = [labels[i] for i in order.tolist()]
    if "" in labels:  # unlabeled: the most frequent box label stands for the sample
        for sid, boxes in split_store.unlabeled_boxes(conn, where):
            labels[int(np.searchsorted(ids, sid))] = sample_label(None, boxes)
    keys = dict.fromkeys([*opts.keep_together, *opts.stratify_keys])
    coded = {k: _key_codes(conn, ids, k) for k in keys}
    group, names, missing = _coded_groups(ids, opts.keep_together, coded)
    data = SplitData(ids, category, labels, group, names, missing)
    data.codes[LABEL] = factorize(labels)
    for k in opts.stratify_keys:
        codes, values = coded[k]
        absent = codes < 0
        if absent.any():
            codes = np.where(absent, len(values), codes)
            values = [*values, MISSING]
        data.codes[k] = (codes, values)
        data.key_values[k] = _Lazy(codes, values)
    return data


class _Lazy(Sequence[str]):
    """A column's values per sample, decoded from its codes only where asked."""

    def __init__(self, codes: np.ndarray, names: list[str]) -> None:
        self.codes, self.names = codes, names

    def __len__(self) -> int:
        return len(self.codes)

    def __getitem__(self, i: Any) -> Any:
        if isinstance(i, slice):
            return [self.names[c] for c in self.codes[i].tolist()]
        return self.names[int(self.codes[i])]


def _key_codes(conn: Connection, ids: np.ndarray, key: str) -> tuple[np.ndarray, list[str]]:
    """(code per selected sample, -1 without the key; the values) of metadata ``key``; a key
    that no sample has is an error."""
    sids, value_col = split_store.key_column(conn, key)
    if sids is None:
        raise InvalidInput(f"no sample has metadata key {key!r}: see `labelblocks metadata keys`")
    vcodes, values = factorize(value_col)
    pos = np.searchsorted(ids, sids).clip(0, len(ids) - 1)
    hit = ids[pos] == sids  # samples outside the selection are left out
    out = np.full(len(ids), -1, dtype=np.int64)
    out[pos[hit]] = vcodes[hit]
    valid = out >= 0
    used = np.bincount(out[valid], minlength=len(values)) > 0
    if not used.all():  # only values the selection has, in the same order
        out[valid] = (np.cumsum(used) - 1)[out[valid]]
        values = [v for v, u in zip(values, used.tolist(), strict=True) if u]
    return out, values


def _coded_groups(ids: np.ndarray, keep: Sequence[str],
                  coded: dict[str, tuple[np.ndarray, list[str]]]) -> tuple[np.ndarray, list[str], int]:
    """(group per sample, group names, samples lacking a key): samples sharing every key's
    value form a group; a sample without one of them is a group of its own."""
    n = len(ids)
    if not keep:
        return np.arange(n), [""] * n, 0
    if len(keep) == 1:
        group, names = coded[keep[0]]
        names = list(names)
    else:
        stacked = np.stack([coded[k][0] for k in keep], axis=1)
        present = (stacked >= 0).all(axis=1)
        uniq, inv = np.unique(stacked[present], axis=0, return_inverse=True)
        group = np.full(n, -1, dtype=np.int64)
        group[present] = inv.reshape(-1)
        names = ["\x1f".join(coded[k][1][c] for k, c in zip(keep, row, strict=True)) for row in uniq.tolist()]
    lacking = np.flatnonzero(group < 0)
    if len(lacking):
        group = group.copy()
        group[lacking] = len(names) + np.arange(len(lacking))
        names += [""] * len(lacking)
    return group, names, len(lacking)


def key_values(store: Store, keys: Iterable[str]) -> dict[str, dict[int, str]]:
    """{key: {sample id: value}}; a key that no sample has is an error."""
    out = {k: store.metadata_values(k) for k in keys}
    for k, values in out.items():
        if not values:
            raise InvalidInput(f"no sample has metadata key {k!r}: see `labelblocks metadata keys`")
    return out


def sample_label(label: str | None, boxes: str) -> str:
    """The label a sample counts under: its own, else its most frequent box label."""
    if label:
        return label
    if boxes and boxes != "[]":  # object detection: the most frequent box label stands for the sample
        counts = Counter(b["label"] for b in json.loads(boxes))
        return min(counts, key=lambda lab: (-counts[lab], lab))
    return NONE_LABEL


def _features(data: SplitData, opts: SplitOptions) -> tuple[np.ndarray, np.ndarray]:
    """(sample position, feature index) pairs of the stratified features."""
    pos: list[np.ndarray] = []
    feat: list[np.ndarray] = []
    offset = 0
    n = len(data.ids)
    for col in ([LABEL] if opts.stratify_label else []) + list(data.key_values):
        codes, names = data.coded(col)
        pos.append(np.arange(n))
        feat.append(codes + offset)
        offset += len(names)
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

    spos, sfeat = _features(data, opts)
    n_feat = int(sfeat.max()) + 1 if len(sfeat) else 0
    gf_feat, counts, totals, bounds = _group_features(data.group[spos], sfeat, n_feat, n_groups)
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
    # the loops below run once per group: on Python floats and short lists, which for a few
    # splits and a handful of features per group is several times faster than numpy calls
    state = _Greedy(bounds, gf_feat, counts, weights, split_w, deficit, room, size, size_w, ratios > 0)
    order_groups = [int(free[i]) for i in order]
    placed_split = state.place(order_groups)
    # one pass of single-group moves, smallest groups first, each taken only if it lowers the
    # total squared deficit and keeps every split within one (largest) group of its target
    limit = float(size.max()) if n_groups else 0.0
    for _ in range(REFINE_PASSES):
        if not state.refine(order_groups[::-1], placed_split, limit):
            break
    for g, s in placed_split.items():
        group_split[g] = s
    todo = result < 0
    result[todo] = group_split[data.group[todo]]
    return result


def _group_features(groups: np.ndarray, feats: np.ndarray, n_feat: int,
                    n_groups: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Feature counts per group, sorted by group: each (group, feature) pair's feature and
    count, every feature's total, and where each group's pairs start."""
    if not n_feat:
        return (np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64), np.empty(0),
                np.zeros(n_groups + 1, dtype=np.int64))
    uniq, counts = np.unique(groups * n_feat + feats, return_counts=True)
    gf_group, gf_feat = uniq // n_feat, uniq % n_feat
    totals = np.bincount(gf_feat, weights=counts, minlength=n_feat)
    return gf_feat, counts, totals, np.searchsorted(gf_group, np.arange(n_groups + 1))


class _Greedy:
    """The greedy placement's state on Python lists: per split, its room (samples still
    wanted) and its deficit of every feature; per group, its features and their counts.

    Placing group g in split s changes the objective (sum over splits of split_w times
    size_w * room^2 + the weighted squared feature deficits) by split_w[s] times
    size_w * sz * (sz - 2 * room[s]) + sum(w*c*c) - 2 * sum(deficit[s][f] * w*c)."""

    def __init__(self, bounds: np.ndarray, feat: np.ndarray, counts: np.ndarray, weights: np.ndarray,
                 split_w: np.ndarray, deficit: np.ndarray, room: np.ndarray, size: np.ndarray,
                 size_w: float, open_split: np.ndarray) -> None:
        counts = counts.astype(np.float64)
        wc = counts * weights[feat]  # per (group, feature): weight * count
        group_of = np.repeat(np.arange(len(bounds) - 1), np.diff(bounds))
        self.bounds, self.feat, self.counts = bounds.tolist(), feat.tolist(), counts.tolist()
        self.wc = wc.tolist()
        self.wcc = np.bincount(group_of, weights=wc * counts, minlength=len(bounds) - 1).tolist()  # sum(w*c*c)
        self.split_w, self.deficit, self.room = split_w.tolist(), deficit.tolist(), room.tolist()
        self.size = size.astype(np.float64).tolist()
        self.size_w, self.open_split = size_w, open_split.tolist()
        self.splits = range(len(self.room))

    def _group(self, g: int) -> tuple[list[int], list[float], list[float], float]:
        lo, hi = self.bounds[g], self.bounds[g + 1]
        return self.feat[lo:hi], self.counts[lo:hi], self.wc[lo:hi], self.wcc[g]

    def _gain(self, s: int, fs: list[int], wc: list[float]) -> float:
        return sum(map(mul, map(self.deficit[s].__getitem__, fs), wc))

    def place(self, order: list[int]) -> dict[int, int]:
        out: dict[int, int] = {}
        room, deficit, split_w, size_w = self.room, self.deficit, self.split_w, self.size_w
        for g in order:
            sz = self.size[g]
            fs, cs, wc, wcc = self._group(g)
            best, best_cost = -1, math.inf
            for s in self.splits:
                if room[s] >= sz:
                    cost = (size_w * sz * (sz - 2 * room[s]) + wcc - 2 * self._gain(s, fs, wc)) * split_w[s]
                    if cost < best_cost:
                        best, best_cost = s, cost
            if best < 0:  # no split has room for the whole group: the one with the most
                best = max(self.splits, key=lambda t: (room[t], -t))
            out[g] = best
            room[best] -= sz
            d = deficit[best]
            for f, c in zip(fs, cs, strict=True):
                d[f] -= c
        return out

    def refine(self, order: list[int], where: dict[int, int], limit: float) -> int:
        """Move single groups (in ``order``) where that lowers the objective; returns how many moved."""
        moved = 0
        room, deficit, split_w, size_w = self.room, self.deficit, self.split_w, self.size_w
        for g in order:
            s = where[g]
            sz = self.size[g]
            if abs(room[s] + sz) > limit:
                continue
            fs, cs, wc, wcc = self._group(g)
            # the change of the objective when moving g from s to t: what adding it to t costs
            # plus what removing it from s costs
            remove = (size_w * sz * (sz + 2 * room[s]) + wcc + 2 * self._gain(s, fs, wc)) * split_w[s]
            best, best_delta = -1, math.inf
            for t in self.splits:
                if t == s or not self.open_split[t] or abs(room[t] - sz) > limit:
                    continue
                delta = (size_w * sz * (sz - 2 * room[t]) + wcc - 2 * self._gain(t, fs, wc)) * split_w[t] + remove
                if delta < best_delta:
                    best, best_delta = t, delta
            if best >= 0 and best_delta < -1e-12:
                where[g] = best
                room[s] += sz
                room[best] -= sz
                ds, dt = deficit[s], deficit[best]
                for f, c in zip(fs, cs, strict=True):
                    ds[f] += c
                    dt[f] -= c
                moved += 1
        return moved


# --- store ------------------------------------------------------------------------------------


# --- summaries and leakage --------------------------------------------------------------------


def summary(data: SplitData, result: np.ndarray) -> dict[str, Any]:
    out: dict[str, Any] = {}
    n = len(data.ids)
    label_codes, label_names = data.coded(LABEL)
    key_codes = {k: data.coded(k) for k in data.key_values}
    for s, cat in enumerate(CATEGORIES):
        mask = result == s
        m = int(mask.sum())
        groups = int(np.count_nonzero(np.bincount(data.group[mask]))) if m else 0
        labels = _counts(label_codes[mask], label_names)
        keys = {k: dict(sorted(_counts(codes[mask], names).items(), key=lambda kv: -kv[1]))
                for k, (codes, names) in key_codes.items()}
        out[cat] = {"samples": m, "share": m / n if n else 0.0, "groups": groups,
                    "labels": dict(sorted(labels.items())), "keys": keys}
    return out


def _counts(codes: np.ndarray, names: list[str]) -> dict[str, int]:
    counts = np.bincount(codes, minlength=len(names))
    return {names[i]: int(counts[i]) for i in np.flatnonzero(counts).tolist()}


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
    with split_store.connection(store, write=False) as conn:
        scanned = split_store.scan(conn, store.where(f))
        if scanned is None:
            return []
        ids, category, _, _ = scanned
        group, names, _ = _coded_groups(ids, keep, {k: _key_codes(conn, ids, k) for k in dict.fromkeys(keep)})
    return _leaks_in(group, names, category, keep)


def write(conn: Connection, data: SplitData, result: np.ndarray, newly: np.ndarray, opts: SplitOptions) -> int:
    """Store the categories and record the placed samples, in the split's transaction.
    Returns how many samples changed category."""
    changed = np.flatnonzero(result != data.category)
    moves = {cat: data.ids[changed[result[changed] == c]].tolist() for c, cat in enumerate(CATEGORIES)}
    placed = data.ids[newly].tolist() if newly.any() else []
    split_store.write_split(conn, moves, len(changed), placed, opts.to_json())
    return len(changed)


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
    """Plan (and unless ``dry_run``, store) a split; returns the report.

    A real split reads, places and writes in one write transaction, so what it planned is
    what the store holds when it ends: the leakage check at the end runs on that plan."""
    opts.check()
    with split_store.connection(store, write=not dry_run) as conn:
        return _split(store, conn, f, opts, dry_run)


def _split(store: Store, conn: Connection, f: SampleFilter, opts: SplitOptions, dry_run: bool) -> dict[str, Any]:
    data = load(store, f, opts, conn)
    before = split_store.assigned_ids(conn) if not opts.reassign else np.empty(0, dtype=np.int64)
    assigned = np.isin(data.ids, before, assume_unique=True) if len(before) else np.zeros(len(data.ids), dtype=bool)
    result = assign(data, opts, assigned)
    newly = ~assigned
    changed = write(conn, data, result, newly, opts) if not dry_run else int((result != data.category).sum())
    report: dict[str, Any] = {
        "dryRun": dry_run, **opts.to_json(), "samples": len(data.ids), "groups": len(data.group_names),
        "missingKey": data.missing_key, "kept": int(assigned.sum()), "placed": int(newly.sum()),
        "changed": changed, "splits": summary(data, result),
    }
    if opts.keep_together:
        report["leaks"] = [lk.to_json() for lk in _leaks_in(data.group, data.group_names, result, opts.keep_together)]
    return report
