"""Store benchmark.

1. Upload 10,000 small PNGs with the real `labelblocks upload` command, against the floor for
   this work: a plain Python loop that reads, hashes (sha256) and copies the same files.
   Target: upload throughput >= 0.5x the copy-and-hash loop.
2. On projects of 100,000 and 1,000,000 samples with a few metadata keys, time one page
   (50 samples) of `samples list` with a two-key metadata filter, as the CLI runs it.
   Target: <= 50 ms at 1,000,000 samples.

Usage: python benchmarks/store.py [--files 10000] [--sizes 100000,1000000] [--work DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from labelblocks.filters import MetadataCondition, SampleFilter
from labelblocks.project import init_project, open_store
from labelblocks.store import NewSample

SITES = [f"site{i}" for i in range(20)]
DEVICES = [f"cam{i}" for i in range(10)]
LABELS = ["cat", "dog", "bird", "car", "person"]


def make_pngs(folder: Path, n: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        arr = rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)
        Image.fromarray(arr).save(folder / f"{LABELS[i % 5]}.{i:05d}.png")


def copy_and_hash(src: Path, dst: Path) -> float:
    dst.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    for p in sorted(src.iterdir()):
        data = p.read_bytes()
        h = hashlib.sha256(data).hexdigest()
        (dst / h).write_bytes(data)
    return time.perf_counter() - t


def cli_upload(project: Path, src: Path) -> float:
    """The real `labelblocks upload` command, run in this process like the floor loop (so
    neither pays interpreter start-up)."""
    from labelblocks.cli import main as cli_main

    t = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        cli_main(["--project", str(project), "upload", str(src), "--metadata", "site=Paris"], standalone_mode=False)
    return time.perf_counter() - t


def seed(project: Path, n: int) -> None:
    rng = np.random.default_rng(1)
    sites = rng.integers(0, len(SITES), n)
    devices = rng.integers(0, len(DEVICES), n)
    labels = rng.integers(0, len(LABELS), n)
    h = "0" * 64
    with open_store(project) as store:
        batch = 20_000
        for start in range(0, n, batch):
            rows = [
                NewSample(filename=f"img{i}.png", category="training", content_hash=h, media_type="image/png",
                          ext=".png", width=640, height=480, label=LABELS[labels[i]],
                          metadata={"site": SITES[sites[i]], "device": DEVICES[devices[i]], "batch": str(i // 1000)})
                for i in range(start, min(n, start + batch))
            ]
            store.add_samples(rows)


def time_filtered_page(project: Path, repeats: int = 21) -> tuple[float, float, int]:
    with open_store(project) as store:
        times = []
        got = 0
        for r in range(repeats):
            f = SampleFilter(
                metadata=[MetadataCondition(key="site", values=[SITES[r % 20]]),
                          MetadataCondition(key="device", values=[DEVICES[(r * 3) % 10]])],
                include_disabled=False,
            )
            t = time.perf_counter()
            page = store.list_samples(f, limit=50, offset=0)
            times.append(time.perf_counter() - t)
            got = len(page)
        return statistics.median(times) * 1000, max(times) * 1000, got


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--files", type=int, default=10_000)
    ap.add_argument("--sizes", default="100000,1000000")
    ap.add_argument("--work", type=Path, default=None)
    args = ap.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="lb-bench-store-"))
    try:
        src = work / "pngs"
        print(f"generating {args.files} PNGs of 32x32 ...", flush=True)
        make_pngs(src, args.files)
        # alternate the two, syncing dirty pages first, and keep each one's best of three
        floors, ours_t = [], []
        for r in range(3):
            os.sync()
            floors.append(copy_and_hash(src, work / f"copied{r}"))
            os.sync()
            project = init_project(work / f"upload-project{r}")
            ours_t.append(cli_upload(project, src))
            with open_store(project) as s:
                assert s.count() == args.files, "upload lost files"
        floor, ours = min(floors), min(ours_t)
        print(f"upload {args.files} PNGs: labelblocks upload {args.files / ours:8.0f} files/s ({ours:.2f} s); "
              f"copy+hash loop {args.files / floor:8.0f} files/s ({floor:.2f} s)")
        print(f"  ratio upload / copy-and-hash throughput = {floor / ours:.2f}x   (target >= 0.50x)")
        for n in [int(x) for x in args.sizes.split(",") if x and int(x) > 0]:
            p = init_project(work / f"list-{n}")
            t = time.perf_counter()
            seed(p, n)
            print(f"seeded {n} samples with 3 metadata keys in {time.perf_counter() - t:.1f} s", flush=True)
            med, worst, got = time_filtered_page(p)
            print(f"  samples list, 2-key metadata filter, page of {got}: median {med:.1f} ms, max {worst:.1f} ms"
                  f"   (target <= 50 ms at 1,000,000)")
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
