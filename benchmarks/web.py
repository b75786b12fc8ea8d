"""Review page benchmark.

1. A preview job of 100 images (640x480) with 10 proposed boxes each, opened in headless
   Chromium (Debian's, through Playwright) at /jobs/JOB?per=100: time from navigation to
   the load event (the grid painted with the thumbnails in view; those below the fold load
   lazily), with the thumbnail cache cold (made on request) and
   warm. Target: <= 1 s.
2. The dataset page of a 1,000,000-sample project with a two-key metadata filter: server time
   per page (an HTTP GET on loopback), against `samples list` of the same page (48 samples,
   --json, in-process) in the same run. Targets: <= 100 ms, and <= 1.5x `samples list`.
3. Thumbnails from a cold cache: images per second, against Pillow's `thumbnail` alone in a
   loop (open, thumbnail, save as JPEG to memory) over the same files. Target: >= 0.8x.

Usage: python benchmarks/web.py [--samples 1000000] [--images 100] [--repeats 5]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import requests
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
from _workers import cpu_flags
from store import DEVICES, SITES, seed

from labelblocks.filters import SampleFilter
from labelblocks.model import BoundingBox, SampleChange
from labelblocks.project import init_project, open_store
from labelblocks.server import BackgroundServer
from labelblocks.store import jobs as job_store
from labelblocks.store.keys import create_key


def make_images(folder: Path, n: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        arr = rng.integers(0, 255, (480, 640, 3), dtype=np.uint8)
        path = folder / f"frame.{i:03d}.png"
        Image.fromarray(arr).save(path)
        out.append(path)
    return out


def job_with_boxes(project: Path, n_boxes: int = 10) -> int:
    """A completed preview job proposing ``n_boxes`` scored boxes for every image."""
    with open_store(project) as store:
        ids = store.select_ids(SampleFilter())
        job = job_store.create_job(store, "bench", "preview", {"name": "bench", "steps": []}, "0" * 64, ids)
        job_store.set_job_status(store, job, "completed")
        rng = np.random.default_rng(1)
        for sid in ids:
            boxes = [BoundingBox(label=f"c{k % 3}", x=int(rng.integers(0, 540)), y=int(rng.integers(0, 380)),
                                 width=int(rng.integers(10, 100)), height=int(rng.integers(10, 100)),
                                 score=round(float(rng.random()), 3)) for k in range(n_boxes)]
            job_store.stage_proposal(store, job, sid, 1, SampleChange(bounding_boxes=boxes))
    return job


def sign_in(base: str, key: str) -> requests.Session:
    s = requests.Session()
    r = s.post(base + "/signin", data={"key": key, "next": "/"}, timeout=30)
    r.raise_for_status()
    return s


def grid_paint(project: Path, key: str, job: int, images: int, repeats: int) -> tuple[float, list[float]]:
    from playwright.sync_api import sync_playwright

    chromium = os.environ.get("LABELBLOCKS_CHROMIUM") or shutil.which("chromium")
    with BackgroundServer(project) as srv, sync_playwright() as p:
        base = srv.url.removesuffix("/v1")
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        ctx = browser.new_context(viewport={"width": 1600, "height": 1000})
        page = ctx.new_page()
        page.goto(base + "/signin")
        page.get_by_label("Project key").fill(key)
        page.get_by_role("button", name="Sign in").click()
        page.wait_for_load_state()

        def once() -> float:
            page.goto(f"{base}/jobs/{job}?per={images}&columns=10", wait_until="load")
            assert page.locator("ul.proposals > li").count() == images
            assert page.locator("rect.added").count() == 10 * images
            return float(page.evaluate("performance.getEntriesByType('navigation')[0].loadEventEnd"))

        cold = once()  # thumbnails made now
        warm = []
        for _ in range(repeats):  # thumbnails made; the browser revalidates them (ETag, 304) or reuses them
            warm.append(once())
        browser.close()
    return cold / 1000, [w / 1000 for w in warm]


def dataset_page(project: Path, key: str, repeats: int) -> tuple[list[float], list[float]]:
    from labelblocks.cli import main as cli_main

    ours, peer = [], []
    with BackgroundServer(project) as srv:
        base = srv.url.removesuffix("/v1")
        s = sign_in(base, key)
        for r in range(repeats):
            site, device = SITES[r % len(SITES)], DEVICES[(r * 3) % len(DEVICES)]
            t = time.perf_counter()
            resp = s.get(f"{base}/", params={"q": f"site={site} device={device}"}, timeout=60)
            ours.append(time.perf_counter() - t)
            assert resp.status_code == 200 and resp.text.count('class="card') == 48, resp.status_code
            out = io.StringIO()
            t = time.perf_counter()
            with contextlib.redirect_stdout(out):
                cli_main(["--project", str(project), "samples", "list", "--where", f"site={site}", "--where",
                          f"device={device}", "--limit", "48", "--json"], standalone_mode=False)
            peer.append(time.perf_counter() - t)
            assert len(json.loads(out.getvalue())) == 48
    return ours, peer


def thumbnails(project: Path, files: list[Path]) -> tuple[float, float]:
    from labelblocks.server.web.thumbs import thumbnail

    with open_store(project) as store:
        hashes = [s.content_hash for s in store.list_samples(limit=None)]
        folder = Path(tempfile.mkdtemp())
        t = time.perf_counter()
        for h in hashes:
            thumbnail(store, folder, h, 256)
        ours = len(hashes) / (time.perf_counter() - t)
        shutil.rmtree(folder)
    t = time.perf_counter()
    for path in files:
        with Image.open(path) as im:
            im.thumbnail((256, 256))
            im.convert("RGB").save(io.BytesIO(), format="JPEG", quality=85)
    floor = len(files) / (time.perf_counter() - t)
    return ours, floor


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", type=int, default=1_000_000)
    ap.add_argument("--images", type=int, default=100, help="at most 200 (the page's largest)")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    print(f"CPU: {cpu_flags()}; {os.cpu_count()} cores")
    work = Path(tempfile.mkdtemp(prefix="lb-bench-web-"))
    try:
        from labelblocks.cli import main as cli_main

        files = make_images(work / "images", args.images)
        project = init_project(work / "images-project")
        with contextlib.redirect_stdout(io.StringIO()):
            cli_main(["--project", str(project), "upload", str(work / "images")], standalone_mode=False)
        with open_store(project) as store:
            _, key = create_key(store, "bench")
        job = job_with_boxes(project)
        ours_t, floor_t = [], []
        for _ in range(3):
            o, f = thumbnails(project, files)
            ours_t.append(o)
            floor_t.append(f)
        o, f = statistics.median(ours_t), statistics.median(floor_t)
        print(f"thumbnails, cold cache: {o:.0f} images/s; Pillow's thumbnail alone {f:.0f} images/s; "
              f"ratio {o / f:.2f}x (target >= 0.8x)")
        cold, warm = grid_paint(project, key, job, args.images, args.repeats)
        print(f"proposals page, {args.images} images x 10 boxes: load event {cold:.2f} s with cold thumbnails, "
              f"{statistics.median(warm):.2f} s warm (median of {len(warm)}) (target <= 1 s)")
        if args.samples:
            big = init_project(work / "big")
            t = time.perf_counter()
            seed(big, args.samples)
            print(f"seeded {args.samples:,} samples in {time.perf_counter() - t:.0f} s")
            with open_store(big) as store:
                _, key = create_key(store, "bench")
            ours, peer = dataset_page(big, key, args.repeats * 3)
            o, p = statistics.median(ours), statistics.median(peer)
            print(f"dataset page, {args.samples:,} samples, 2-key filter, 48 per page: {o * 1000:.1f} ms "
                  f"(target <= 100 ms); `samples list` of the same page {p * 1000:.1f} ms; ratio {o / p:.2f}x "
                  "(target <= 1.5x)")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
