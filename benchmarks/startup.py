"""Start-up benchmark: what a command costs before it does anything.

1. `labelblocks --help`, against a bare interpreter that imports click (the floor of any
   click command line). Target: <= 0.3 s.
2. `labelblocks samples list` (a page of the demo project), against a bare interpreter that
   reads the same page with sqlite3. Target: <= 0.3 s.
3. A model block's fixed cost: `labelblocks actions preview` of an OWL-ViT step on one image
   (the CLI, the imports, the model load from a folder and one image), against a bare
   `import torch, transformers` plus `from_pretrained` of the same folder (processor and
   model). A full-size OWL-ViT B/32 with random weights: the same load as the trained model.
   Target: <= 1.2x.

Each is the median of --repeats runs, each a new process.

Usage: python benchmarks/startup.py [--repeats 7] [--model-repeats 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _workers import cpu_flags

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

PY = sys.executable


def wall(cmd: list[str], cwd: Path | None = None, repeats: int = 7) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        subprocess.run(cmd, cwd=cwd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--model-repeats", type=int, default=3)
    args = ap.parse_args()
    print(f"CPU: {os.cpu_count()} cores, {cpu_flags()}")
    work = Path(tempfile.mkdtemp(prefix="lb-bench-startup-"))
    lb = [PY, "-m", "labelblocks"]

    ours = wall([*lb, "--help"], repeats=args.repeats)
    floor = wall([PY, "-c", "import click"], repeats=args.repeats)
    print(f"labelblocks --help: {ours:.3f} s; bare interpreter + click {floor:.3f} s; ratio {ours / floor:.2f}x "
          f"(target <= 0.3 s)")

    subprocess.run([*lb, "demo", str(work / "demo"), "--json"], check=True, capture_output=True)
    ours = wall([*lb, "samples", "list"], cwd=work / "demo", repeats=args.repeats)
    read = ("import sqlite3; c = sqlite3.connect('.labelblocks/project.db'); "
            "c.execute('SELECT * FROM samples ORDER BY id LIMIT 50').fetchall()")
    floor = wall([PY, "-c", read], cwd=work / "demo", repeats=args.repeats)
    print(f"labelblocks samples list: {ours:.3f} s; bare interpreter + sqlite3 page {floor:.3f} s; "
          f"ratio {ours / floor:.2f}x (target <= 0.3 s)")

    from tests.blocks.tiny_models import make_owl

    model = make_owl(work / "owlvit-b32", full_size=True)
    project = work / "demo"
    subprocess.run([*lb, "--project", str(project), "actions", "create", "boxes", "--step", "owlvit",
                    "-p", "prompt=a box (box, 0.75)", "-p", f"model={model}"], check=True, capture_output=True)
    ours = wall([*lb, "--project", str(project), "actions", "preview", "boxes", "--ids", "1", "--no-cache"],
                repeats=args.model_repeats)
    bare = ("import torch, transformers\n"
            "from transformers import AutoModelForZeroShotObjectDetection, AutoProcessor\n"
            f"AutoProcessor.from_pretrained({str(model)!r})\n"
            f"AutoModelForZeroShotObjectDetection.from_pretrained({str(model)!r})\n")
    floor = wall([PY, "-c", bare], repeats=args.model_repeats)
    print(f"OWL-ViT B/32 block, preview of 1 image (imports, load, 1 image): {ours:.2f} s; bare imports + "
          f"from_pretrained {floor:.2f} s; ratio {ours / floor:.2f}x (target <= 1.2x)")


if __name__ == "__main__":
    main()
