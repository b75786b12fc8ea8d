"""Split benchmark.

1,000,000 samples in 50,000 groups (video_file) with 20 labels. Times `labelblocks split
--keep-together video_file` end to end (reading labels and metadata from the store, placing the
groups, writing the categories in one transaction, the leakage check on what was written), and,
as the reference, scikit-learn's GroupShuffleSplit on the same arrays: the group values as the
store holds them (strings, as a numpy unicode array) and the labels, split three ways (train
against the rest, then the rest into validation and test). GroupShuffleSplit on integer-coded
groups is printed too. Target: the split takes at most 2x the reference.

Also printed, as a peer that pays the same reading and writing: GroupShuffleSplit in place of
labelblocks' placement, between the same reads from the store (labelblocks.split.load) and the
same write of the categories in one transaction (labelblocks.split.write).

Each repetition starts from every sample in training and no earlier split (reset untimed).

Usage: python benchmarks/split.py [--samples 1000000] [--groups 50000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from sklearn.model_selection import GroupShuffleSplit

from labelblocks.filters import SampleFilter
from labelblocks.project import init_project, open_store
from labelblocks.split import LABEL, SplitOptions, load, run_split, write
from labelblocks.store import NewSample


def seed(project: Path, n: int, n_groups: int, n_labels: int) -> None:
    rng = np.random.default_rng(7)
    group = np.sort(rng.integers(0, n_groups, n))  # frames of a video arrive together
    dominant = rng.integers(0, n_labels, n_groups)
    other = rng.integers(0, n_labels, n)
    labels = np.where(rng.random(n) < 0.7, dominant[group], other)
    with open_store(project) as store:
        for start in range(0, n, 50_000):
            store.add_samples([
                NewSample(filename=f"frame{i}.png", category="training", content_hash="0" * 64,
                          media_type="image/png", ext=".png", width=64, height=64, label=f"label{labels[i]:02d}",
                          metadata={"video_file": f"video{group[i]:06d}.mp4"})
                for i in range(start, min(n, start + 50_000))
            ])


def reset(project: Path) -> None:
    with open_store(project) as store, store.transaction() as conn:
        conn.exec_driver_sql("UPDATE samples SET category = 'training' WHERE category != 'training'")
        conn.exec_driver_sql("DELETE FROM split_runs")


def reference(groups: np.ndarray, labels: np.ndarray) -> float:
    x = np.zeros((len(groups), 1))
    t = time.perf_counter()
    train, rest = next(GroupShuffleSplit(n_splits=1, test_size=0.2, random_state=0).split(x, labels, groups))
    val, test = next(GroupShuffleSplit(n_splits=1, test_size=0.5, random_state=0)
                     .split(x[rest], labels[rest], groups[rest]))
    dt = time.perf_counter() - t
    assert len(train) + len(val) + len(test) == len(groups)
    return dt


def store_peer(project: Path) -> float:
    """Read as labelblocks does, place with GroupShuffleSplit, write as labelblocks does."""
    with open_store(project) as store:
        t = time.perf_counter()
        with store.transaction() as conn:
            data = load(store, SampleFilter(), SplitOptions(keep_together=["video_file"]), conn)
            labels = data.coded(LABEL)[0]
            x = np.zeros((len(data.ids), 1))
            _train, rest = next(GroupShuffleSplit(n_splits=1, test_size=0.2, random_state=0)
                               .split(x, labels, data.group))
            val, test = next(GroupShuffleSplit(n_splits=1, test_size=0.5, random_state=0)
                             .split(x[rest], labels[rest], data.group[rest]))
            result = np.zeros(len(data.ids), dtype=np.int64)
            result[rest[val]], result[rest[test]] = 1, 2
            write(conn, data, result, np.ones(len(data.ids), dtype=bool), SplitOptions(keep_together=["video_file"]))
        return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", type=int, default=1_000_000)
    ap.add_argument("--groups", type=int, default=50_000)
    ap.add_argument("--labels", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="lb-bench-split-"))
    try:
        project = init_project(work / "p")
        t = time.perf_counter()
        seed(project, args.samples, args.groups, args.labels)
        print(f"seeded {args.samples} samples in {time.perf_counter() - t:.0f} s")
        with open_store(project) as store:
            rows = store.scan(SampleFilter(), "label")
            values = store.metadata_values("video_file")
        labels = np.array([r[1] for r in rows])
        groups_str = np.array([values[r[0]] for r in rows])
        groups_int = np.unique(groups_str, return_inverse=True)[1]
        ours: list[float] = []
        ref_str: list[float] = []
        ref_int: list[float] = []
        peer: list[float] = []
        report = {}
        for _ in range(args.repeats):
            reset(project)
            with open_store(project) as store:
                t = time.perf_counter()
                report = run_split(store, SampleFilter(), SplitOptions(keep_together=["video_file"]), dry_run=False)
                ours.append(time.perf_counter() - t)
            ref_str.append(reference(groups_str, labels))
            ref_int.append(reference(groups_int, labels))
            reset(project)
            peer.append(store_peer(project))
        assert report["leaks"] == [] and report["placed"] == args.samples
        o, rs, ri = statistics.median(ours), statistics.median(ref_str), statistics.median(ref_int)
        pe = statistics.median(peer)
        shares = ", ".join(f"{c} {s['share']:.3f}" for c, s in report["splits"].items())
        print(f"{args.samples} samples, {args.groups} groups, {args.labels} labels; medians of {args.repeats}")
        print(f"  labelblocks split (read, place, write, check): {o:.2f} s   [{shares}; {report['changed']} written]")
        print(f"  GroupShuffleSplit, string groups:              {rs:.2f} s   ratio {o / rs:.2f}x (target <= 2x)")
        print(f"  GroupShuffleSplit, integer-coded groups:       {ri:.2f} s   ratio {o / ri:.2f}x")
        print(f"  read + GroupShuffleSplit + write (same I/O):   {pe:.2f} s   ratio {o / pe:.2f}x")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
