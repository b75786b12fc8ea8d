"""GPT-4o block benchmark, against the loopback emulator of the Chat Completions API
(tests/blocks/openai_emulator.py) answering in 100 ms, on 500 images, all in one run:

1. `actions run` of gpt4o-image-label at concurrency 1 (how most labeling tools call it) and 16;
   the ideal is concurrency / latency;
2. concurrency 16 with 10% of answers being 429 with Retry-After: 0.2;
3. "label all" after a preview of 100 samples: the previewed samples must cost no request.

Targets: concurrency 16 >= 75% of the ideal; with the 429s every sample labeled and billed
(successful) requests = 500; the previewed samples cost zero requests.

Usage: python benchmarks/gpt4o.py [--images 500] [--latency 0.1]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.blocks.openai_emulator import KEY, Emulator, Fault  # noqa: E402


def make_project(root: Path, n: int) -> Path:
    import numpy as np
    from PIL import Image

    from labelblocks.project import init_project

    imgs = root / "images"
    imgs.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(imgs / f"img{i:04d}.png")
    project = init_project(root / "project")
    lb(project, "upload", str(imgs), "--no-label")
    return project


def lb(project: Path, *args: str) -> dict[str, Any]:
    from labelblocks.cli import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
        try:
            main.main(["--project", str(project), *args], standalone_mode=False)
        except SystemExit as e:
            if e.code not in (0, None):
                raise
    text = out.getvalue().strip()
    return json.loads(text) if text.startswith("{") else {}


def run(project: Path, emu: Emulator, name: str, concurrency: int, preview: int = 0) -> dict[str, Any]:
    lb(project, "actions", "create", name, "--step", "gpt4o-image-label", "-p", f"base-url={emu.base_url}",
       "-p", f"concurrency={concurrency}", "-p", "max-retries=8", "-p", f"prompt=benchmark {name}")
    before = emu.ok
    previewed = 0
    if preview:
        lb(project, "actions", "preview", name, "--limit", str(preview), "--json")
        previewed = emu.ok - before
    t = time.perf_counter()
    ok_before = emu.ok
    out = lb(project, "actions", "run", name, "--json")
    seconds = time.perf_counter() - t
    return {"seconds": seconds, "summary": out, "requests": emu.ok - ok_before, "previewed": previewed}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=500)
    ap.add_argument("--latency", type=float, default=0.1)
    a = ap.parse_args()
    os.environ["OPENAI_API_KEY"] = KEY
    n = a.images
    with tempfile.TemporaryDirectory(prefix="lb-gpt4o-") as tmp:
        project = make_project(Path(tmp), n)
        # each run uses its own prompt: no answer comes from another run's cache
        with Emulator(latency=a.latency) as emu:
            c1 = run(project, emu, "c1", 1)
            c16 = run(project, emu, "c16", 16)
        calls = {"n": 0}

        def some_429(k: int, req: dict[str, Any]) -> Fault | None:
            calls["n"] += 1
            return Fault(429, {"Retry-After": "0.2"}) if k % 10 == 0 else None

        with Emulator(latency=a.latency, fault=some_429) as emu:
            r429 = run(project, emu, "r429", 16)
            billed_429 = emu.ok
            failures_429 = r429["summary"]["failed"]
        with Emulator(latency=a.latency) as emu:
            after = run(project, emu, "after-preview", 16, preview=100)

    ideal = 16 / a.latency
    rate1, rate16 = n / c1["seconds"], n / c16["seconds"]
    print(f"{n} images, emulator latency {a.latency * 1000:.0f} ms")
    print(f"{'run':40} {'images/s':>9} {'requests':>9}")
    print(f"{'concurrency 1':40} {rate1:9.1f} {c1['requests']:9d}")
    print(f"{'concurrency 16':40} {rate16:9.1f} {c16['requests']:9d}")
    print(f"{'concurrency 16, 10% 429 (Retry-After 0.2)':40} {n / r429['seconds']:9.1f} {billed_429:9d}   "
          f"failed {failures_429}, retries {r429['summary']['usage'].get('retries', 0)}")
    print(f"{'label all after a preview of 100':40} {n / after['seconds']:9.1f} {after['requests']:9d}   "
          f"preview cost {after['previewed']} requests; cache hits {after['summary']['cached']}")
    print()
    print(f"concurrency 16 / concurrency 1:   {rate16 / rate1:6.1f}x")
    print(f"concurrency 16 / ideal ({ideal:.0f}/s):  {rate16 / ideal:6.1%}   (target >= 75%)")
    print(f"with 429s: labeled {r429['summary']['applied']}/{n}, billed requests {billed_429}   (target {n} and {n})")
    print(f"after preview: requests for the 100 previewed samples: {after['requests'] - (n - 100)}   (target 0)")


if __name__ == "__main__":
    main()
