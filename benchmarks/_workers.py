"""What the model-block benchmarks share: each measurement runs in its own process (so its
peak memory is its own), and `labelblocks actions run` is timed in-process with the block's
model loading (``setup``) measured apart."""

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
