"""What the benchmarks share: each model-block measurement runs in its own process (so its
peak memory is its own), and `labelblocks actions run` is timed in-process with the block's
model loading (``setup``) measured apart; the CPU's flags; the CLI in-process; samples seeded
straight into the store's tables."""

from __future__ import annotations

import contextlib
import io
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any


def cpu_flags() -> str:
    """The CPU's flags that decide bf16's speed (benchmarks print them)."""
    try:
        flags = Path("/proc/cpuinfo").read_text().split("flags", 1)[1].split("\n", 1)[0]
    except (OSError, IndexError):
        return "unknown"
    return ", ".join(f for f in ("amx_bf16", "avx512_bf16", "avx512f", "avx2") if f in flags.split()) or "none"


def cli_in_process(project: Path, *args: str) -> None:
    """`labelblocks --project PROJECT ARGS...` in this process, its output dropped (an error
    exits, as the command does)."""
    from labelblocks.cli import main as cli_main

    with contextlib.redirect_stdout(io.StringIO()):
        cli_main(["--project", str(project), *args], standalone_mode=False)


def insert_samples(db: Path, rows: Any, width: int, height: int) -> None:
    """Untimed: image samples ``(id, label, boxes JSON, content hash)`` straight into the
    store's tables (the store's own insert validates every box one by one)."""
    import sqlite3

    con = sqlite3.connect(db)
    now = time.time()
    with con:
        con.executemany(
            "INSERT INTO samples (id, filename, category, label, bounding_boxes, structured_labels, is_disabled, "
            "chart_type, media_type, ext, width, height, content_hash, created_at, updated_at) "
            "VALUES (?, ?, 'training', ?, ?, '[]', 0, 'image', 'image/png', '.png', ?, ?, ?, ?, ?)",
            ((i, f"img{i}.png", label, boxes, width, height, h, now, now) for i, label, boxes, h in rows))
    con.close()


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def median(runs: list[dict[str, Any]]) -> dict[str, Any]:
    return sorted(runs, key=lambda r: r["rate"])[len(runs) // 2]


def cli(project: Path, *args: str) -> str:
    """`labelblocks --project PROJECT ARGS...` in a subprocess; its stdout."""
    r = subprocess.run([sys.executable, "-m", "labelblocks", "--project", str(project), *args],
                       capture_output=True, text=True, check=False)
    if r.returncode != 0:
        raise SystemExit(f"labelblocks {' '.join(args)} failed:\n{r.stderr}")
    return r.stdout


def timed_batches(forward: Any, data: Any, batch: int) -> float:
    """Seconds ``forward`` takes over ``data`` in slices of ``batch``, after one untimed warm-up."""
    forward(data[:batch])
    t = time.perf_counter()
    for i in range(0, len(data), batch):
        forward(data[i : i + batch])
    return time.perf_counter() - t


def run_worker(script: str, work: Path, *args: str) -> dict[str, Any]:
    """``python SCRIPT --worker WORK ARGS...``: the JSON object its last line prints."""
    t = time.perf_counter()
    r = subprocess.run([sys.executable, script, "--worker", str(work), *args], capture_output=True, text=True,
                       check=False, env={**os.environ, "TRANSFORMERS_VERBOSITY": "error"})
    if r.returncode != 0:
        raise SystemExit(f"worker {args} failed:\n{r.stderr[-3000:]}")
    out: dict[str, Any] = json.loads(r.stdout.strip().splitlines()[-1])
    out["process_seconds"] = time.perf_counter() - t
    return out


def timed_action_run(project: Path, action: str, block_cls: Any) -> dict[str, Any]:
    """`labelblocks actions run ACTION --json` in this process, with ``block_cls.setup`` (the
    model load) timed apart. Every sample must be computed: none cached, none failed."""
    from labelblocks.cli import main

    setup_seconds = 0.0
    real_setup = block_cls.setup

    def timed_setup(self: Any, *a: Any, **kw: Any) -> None:
        nonlocal setup_seconds
        t = time.perf_counter()
        real_setup(self, *a, **kw)
        setup_seconds += time.perf_counter() - t

    block_cls.setup = timed_setup
    out = io.StringIO()
    t = time.perf_counter()
    with contextlib.redirect_stdout(out):
        main.main(["--project", str(project), "actions", "run", action, "--json"], standalone_mode=False)
    total = time.perf_counter() - t
    summary = json.loads(out.getvalue())
    if summary["cached"] or summary["failed"]:
        raise SystemExit(f"expected every sample computed, got {summary}")
    return {"seconds": total, "setup": setup_seconds, "labeling": total - setup_seconds, "summary": summary,
            "peak_mb": peak_mb()}
