"""The store on PostgreSQL, against its floor on the same server.

1. The runner benchmark on PostgreSQL: preview, then apply, a no-op block over N samples
   (default 100,000), against the same changes written by one batched statement per phase
   (psycopg's executemany of the proposal INSERTs, then of the label UPDATEs) in one
   transaction. Target: <= 2x in each phase, as on SQLite.
2. A filtered page of `samples list` (50 samples with metadata site=site3, and with a metadata
   key present) at M samples (default 1,000,000). Target: <= 50 ms.

3. The Ray engine's overhead: a CPU-bound block (benchmarks/_cpu_block.py: decoding and numpy
   FFTs, a fixed amount of work an image) on N images (default 2,000), `actions run --engine ray
   --workers 1` on a Ray cluster started on this machine against in-process (target <= 1.25x);
   and 2 workers against 1, reported as measured (on 2 cores, the driver competes with them).

A PostgreSQL server is started from the Debian binaries (as the tests do) unless --server URL
names one (postgresql+psycopg://USER@HOST:PORT, trust or PGPASSWORD authentication).

Usage: python benchmarks/scale.py [--samples 100000] [--page-samples 1000000] [--ray-images 2000]
       [--repeats 3] [--only postgres|ray]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import psycopg

from labelblocks.actions import Action, Step, save_action
from labelblocks.filters import MetadataCondition, SampleFilter
from labelblocks.model import SampleChange
from labelblocks.plugins import get_plugins
from labelblocks.project import init_project, open_store
from labelblocks.runner import Runner
from labelblocks.store import NewSample

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parent.parent))
from _cpu_block import Plugin as CpuPlugin  # a CPU-bound block, importable by Ray's workers
from _workers import cpu_flags

from runner import _Plugin  # the runner benchmark's no-op block
from tests.services import postgres_cluster, ray_cluster  # the servers the tests start, started alike


def new_database(server: str, name: str) -> str:
    with psycopg.connect(server.replace("+psycopg", "") + "/postgres", autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name}")
        conn.execute(f"CREATE DATABASE {name}")
    return f"{server}/{name}"


def seed(project: Path, n: int) -> None:
    with open_store(project) as store:
        for start in range(0, n, 20_000):
            store.add_samples([NewSample(filename=f"s{i}.png", category="training", content_hash="0" * 64,
                                         media_type="image/png", ext=".png", width=8, height=8,
                                         metadata={"site": f"site{i % 10}", **({"reviewed": "yes"} if i % 7 == 0 else {})})
                               for i in range(start, min(n, start + 20_000))])


def floor(url: str, statement: str, rows: list[tuple[Any, ...]], cleanup: str | None = None) -> float:
    with psycopg.connect(url.replace("+psycopg", "")) as conn:
        t = time.perf_counter()
        with conn.transaction(), conn.cursor() as cur:
            cur.executemany(statement, rows)
        dt = time.perf_counter() - t
        if cleanup:
            conn.execute(cleanup)
            conn.commit()
    return dt


def runner_phase(server: str, n: int, repeats: int) -> None:
    url = new_database(server, "bench_runner")
    project = init_project(Path(tempfile.mkdtemp(prefix="lb-bench-scale-")) / "p", database=url)
    seed(project, n)
    plugins = get_plugins()
    plugins.pm.register(_Plugin(), name="bench")
    plugins._registry = None
    registry = plugins.registry()
    med = statistics.median
    ours_prev, ours_apply, floors_prev, floors_apply = [], [], [], []
    with open_store(project) as store:
        ids = store.select_ids(SampleFilter())
        action = Action(name="bench", steps=[Step(block="bench-noop")], cache_unchanged_steps=False)
        save_action(store, action)
        runner = Runner(store, registry)
        change = SampleChange(label="bench").model_dump_json(by_alias=True, exclude_none=True)
        for _ in range(repeats):  # alternated, so that both sides see the same machine
            floors_prev.append(floor(url, "INSERT INTO proposals (job_id, sample_id, step, change, record, revision) "
                                          "VALUES (999999, %s, 1, %s, NULL, NULL)", [(i, change) for i in ids],
                                     "DELETE FROM proposals WHERE job_id = 999999"))
            t = time.perf_counter()
            summary = runner.preview(action, limit=None, use_cache=False)
            ours_prev.append(time.perf_counter() - t)
            floors_apply.append(floor(url, "UPDATE samples SET label = %s, updated_at = %s WHERE id = %s",
                                      [("bench", time.time(), i) for i in ids], "UPDATE samples SET label = NULL"))
            t = time.perf_counter()
            assert runner.apply(summary.job_id) == n
            ours_apply.append(time.perf_counter() - t)
            with psycopg.connect(url.replace("+psycopg", "")) as conn:
                conn.execute("UPDATE samples SET label = NULL")
    print(f"runner on PostgreSQL, {n} samples, no-op block; medians of {repeats} alternated runs")
    for phase, ours, theirs, what in (("preview", ours_prev, floors_prev, "INSERT"),
                                      ("apply", ours_apply, floors_apply, "UPDATE")):
        print(f"  {phase:<8} runner {n / med(ours):9.0f} samples/s ({med(ours):.2f} s); executemany {what} "
              f"{n / med(theirs):9.0f} samples/s ({med(theirs):.2f} s); ratio {med(ours) / med(theirs):.2f}x "
              "(target <= 2x)")


def page_phase(server: str, n: int, repeats: int) -> None:
    url = new_database(server, "bench_page")
    project = init_project(Path(tempfile.mkdtemp(prefix="lb-bench-scale-")) / "p", database=url)
    t = time.perf_counter()
    seed(project, n)
    print(f"a filtered page at {n} samples on PostgreSQL (seeded in {time.perf_counter() - t:.0f} s)")
    with psycopg.connect(url.replace("+psycopg", ""), autocommit=True) as conn:
        conn.execute("ANALYZE")
    filters = {"site=site3": SampleFilter(metadata=[MetadataCondition(key="site", values=["site3"])]),
               "has reviewed": SampleFilter(metadata=[MetadataCondition(key="reviewed")]),
               "site=site3, last page": SampleFilter(metadata=[MetadataCondition(key="site", values=["site3"])])}
    with open_store(project) as store:
        for name, f in filters.items():
            offset = n // 10 - 50 if "last" in name else 0
            times = []
            for _ in range(max(repeats, 5)):
                t = time.perf_counter()
                page = store.list_samples(f, limit=50, offset=offset)
                times.append(time.perf_counter() - t)
            assert len(page) == 50
            print(f"  {name:<22} 50 samples in {statistics.median(times) * 1000:6.1f} ms (target <= 50 ms)")


def ray_phase(n: int, repeats: int) -> None:
    from PIL import Image

    from labelblocks.executors.ray import RayEngine
    from labelblocks.uploads import UploadItem, upload

    work = Path(tempfile.mkdtemp(prefix="lb-bench-ray-"))
    project = init_project(work / "p")
    rng = np.random.default_rng(0)
    folder = work / "imgs"
    folder.mkdir()
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (96, 128, 3), dtype=np.uint8)).save(folder / f"img{i}.png")
    plugins = get_plugins()
    plugins.pm.register(CpuPlugin(), name="bench-cpu")
    plugins._registry = None
    registry = plugins.registry()
    med = statistics.median
    # the cluster's workers import benchmarks/ modules (the CPU-bound block)
    env = {"PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")])}
    with open_store(project) as store, ray_cluster([os.cpu_count() or 2], env) as address:
        upload(store, [UploadItem(source=str(p), name=p.name, path=p) for p in sorted(folder.iterdir())])
        action = Action(name="cpu", steps=[Step(block="bench-cpu")], cache_unchanged_steps=False)
        save_action(store, action)
        times: dict[str, list[float]] = {"in-process": [], "ray, 1 worker": [], "ray, 2 workers": []}
        engines = {"in-process": None, "ray, 1 worker": RayEngine(address, 1), "ray, 2 workers": RayEngine(address, 2)}
        for _ in range(repeats):  # alternated
            for name, engine in engines.items():
                t = time.perf_counter()
                summary = Runner(store, registry, engine).preview(action, limit=None, use_cache=False)
                times[name].append(time.perf_counter() - t)
                assert summary.computed == n and summary.failed == 0, summary
    base = med(times["in-process"])
    print(f"Ray engine, {n} images, a CPU-bound block; preview of all, medians of {repeats}")
    for name, ts in times.items():
        print(f"  {name:<15} {n / med(ts):7.1f} images/s ({med(ts):.2f} s); {med(ts) / base:.2f}x in-process")
    one, two = med(times["ray, 1 worker"]), med(times["ray, 2 workers"])
    print(f"  overhead of --engine ray --workers 1: {one / base:.2f}x (target <= 1.25x); "
          f"2 workers run {one / two:.2f}x the throughput of 1 on {os.cpu_count()} cores")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", type=int, default=100_000)
    ap.add_argument("--page-samples", type=int, default=1_000_000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--ray-images", type=int, default=2000)
    ap.add_argument("--only", choices=["postgres", "ray"], help="run one part only")
    ap.add_argument("--server", help="a PostgreSQL server's URL (default: start one from the Debian binaries)")
    args = ap.parse_args()
    print(f"CPU: {cpu_flags()}; {os.cpu_count()} cores")
    if args.only != "ray":
        with contextlib.ExitStack() as stack:
            server = args.server or stack.enter_context(postgres_cluster(durable=True))
            runner_phase(server, args.samples, args.repeats)
            page_phase(server, args.page_samples, args.repeats)
    if args.only != "postgres":
        ray_phase(args.ray_images, args.repeats)


if __name__ == "__main__":
    main()
