"""Runner overhead benchmark.

Preview, then apply, an action whose only step is a no-op block (it proposes one label per
sample) over N samples (default 100,000), and compare each phase with the floor: writing the
same changes with one batched SQL statement (executemany) in one transaction, on a plain
sqlite3 connection with the store's settings:
  preview floor: INSERT the same proposal rows;   apply floor: UPDATE the same labels.
Target: runner time <= 2x the floor in each phase. The runner also records who wrote each label
(the samples' provenance, checked after each apply); the floor writes the label alone.

The runner's time includes the no-op block's own (it builds one SampleChange per sample);
that is measured inside the block and reported. The runner alone is measured too: the same
preview with a block that returns one shared SampleChange for every sample.

Usage: python benchmarks/runner.py [--samples 100000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, ClassVar

from labelblocks.actions import Action, Step, save_action
from labelblocks.blocks import Block
from labelblocks.filters import SampleFilter
from labelblocks.hookspecs import hookimpl
from labelblocks.model import SampleChange
from labelblocks.plugins import get_plugins
from labelblocks.project import init_project, open_store
from labelblocks.runner import Runner
from labelblocks.store import NewSample, _set_sqlite_pragmas


class NoOp(Block):
    name = "bench-noop"
    parameters: ClassVar[dict[str, Any]] = {"version": 1, "type": "ai-action", "info": {"name": "No-op", "operatesOn": ["other"]},
                                            "parameters": []}
    default_batch_size = 1000
    seconds = 0.0  # time spent inside label(), over all batches
    shared: SampleChange | None = None  # set: return this one change for every sample (a block costing nothing)

    def label(self, batch: Any, args: Any, context: Any) -> list[SampleChange]:
        t = time.perf_counter()
        out = [NoOp.shared] * len(batch) if NoOp.shared else [SampleChange(label="bench") for _ in batch]
        NoOp.seconds += time.perf_counter() - t
        return out


class _Plugin:
    @hookimpl
    def register_blocks(self, register: Any) -> None:
        register(NoOp)


def seed(project: Path, n: int) -> None:
    with open_store(project) as store:
        for start in range(0, n, 20_000):
            store.add_samples([NewSample(filename=f"s{i}.png", category="training", content_hash="0" * 64,
                                         media_type="image/png", ext=".png", width=8, height=8,
                                         metadata={"site": f"site{i % 10}"})
                               for i in range(start, min(n, start + 20_000))])


def _connect(db: Path) -> sqlite3.Connection:
    """A plain sqlite3 connection with the store's own settings (WAL, synchronous=NORMAL, cache)."""
    con = sqlite3.connect(db)
    _set_sqlite_pragmas(con, None)
    return con


def floor_preview(db: Path, ids: list[int]) -> float:
    con = _connect(db)
    change = json.dumps({"label": "bench"})
    t = time.perf_counter()
    with con:
        con.executemany("INSERT INTO proposals (job_id, sample_id, step, change, record, revision) "
                        "VALUES (999999, ?, 1, ?, NULL, NULL)", [(i, change) for i in ids])
    dt = time.perf_counter() - t
    with con:
        con.execute("DELETE FROM proposals WHERE job_id = 999999")
    return dt


def floor_apply(db: Path, ids: list[int]) -> float:
    con = _connect(db)
    t = time.perf_counter()
    with con:
        con.executemany("UPDATE samples SET label = ?, updated_at = ? WHERE id = ?",
                        [("bench", time.time(), i) for i in ids])
    return time.perf_counter() - t


def recorded(db: Path, n: int, job_id: int) -> None:
    """Untimed: every sample's label is recorded as written by this job of the action (its provenance)."""
    con = sqlite3.connect(db)
    found = con.execute("SELECT count(*) FROM samples WHERE provenance LIKE ?", (f'%"label":{{"by":{{"action":"bench","job":{job_id},%',)).fetchone()[0]
    con.close()
    assert found == n, f"{found} of {n} samples record who wrote their label"


def reset(db: Path) -> None:
    """Untimed: every sample back to unlabeled, so that the next repetition does the same work."""
    con = sqlite3.connect(db)
    with con:
        con.execute("UPDATE samples SET label = NULL, provenance = NULL")
    con.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", type=int, default=100_000)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="lb-bench-runner-"))
    try:
        project = init_project(work / "p")
        seed(project, args.samples)
        plugins = get_plugins()
        plugins.pm.register(_Plugin(), name="bench")
        plugins._registry = None
        registry = plugins.registry()
        db = project / ".labelblocks" / "project.db"
        n = args.samples
        ours_prev, ours_bare, ours_apply, floors_prev, floors_apply, inside = [], [], [], [], [], []
        with open_store(project) as store:
            ids = store.select_ids(SampleFilter())
            action = Action(name="bench", steps=[Step(block="bench-noop")], cache_unchanged_steps=False)
            save_action(store, action)
            runner = Runner(store, registry)
            for _ in range(args.repeats):  # alternated, so that both sides see the same machine
                floors_prev.append(floor_preview(db, ids))
                NoOp.seconds = 0.0
                t = time.perf_counter()
                summary = runner.preview(action, limit=None, use_cache=False)
                ours_prev.append(time.perf_counter() - t)
                inside.append(NoOp.seconds)
                NoOp.shared = SampleChange(label="bench")  # the runner alone: the block returns one shared change
                t = time.perf_counter()
                runner.preview(action, limit=None, use_cache=False)
                ours_bare.append(time.perf_counter() - t)
                NoOp.shared = None
                floors_apply.append(floor_apply(db, ids))
                reset(db)  # the floor wrote the labels: put them back, so that apply writes every one again
                t = time.perf_counter()
                applied = runner.apply(summary.job_id)
                ours_apply.append(time.perf_counter() - t)
                assert applied == n
                recorded(db, n, summary.job_id)
                reset(db)
        med = statistics.median
        t_prev, f_prev, t_block = med(ours_prev), med(floors_prev), med(inside)
        t_apply, f_apply = med(ours_apply), med(floors_apply)
        print(f"{n} samples, no-op block; medians of {args.repeats} alternated runs")
        print(f"  preview: runner {n / t_prev:9.0f} samples/s ({t_prev:.2f} s); one batched INSERT "
              f"{n / f_prev:9.0f} samples/s ({f_prev:.2f} s); ratio {t_prev / f_prev:.2f}x (target <= 2x)")
        print(f"           of which inside the block {t_block:.2f} s (it builds {n} SampleChange objects); "
              f"runner alone (the block returns one shared change) {med(ours_bare):.2f} s, "
              f"{med(ours_bare) / f_prev:.2f}x the floor")
        print(f"  apply:   runner {n / t_apply:9.0f} samples/s ({t_apply:.2f} s); one batched UPDATE "
              f"{n / f_apply:9.0f} samples/s ({f_apply:.2f} s); ratio {t_apply / f_apply:.2f}x (target <= 2x)")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
