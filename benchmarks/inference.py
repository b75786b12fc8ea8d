"""Inference service benchmark.

1. Throughput: a full-size OWL-ViT B/32 (random weights: the compute of the trained model),
   published and served by `labelblocks serve`; 16 concurrent clients send 640x480 images
   for a bounded time. Images/s against `labelblocks actions run` of the same action over the
   same images in the same run (target >= 0.8x), with p50 / p99 latency.
2. Overhead: one client, one small image at a time, to a relabel-only model: the server's
   time per request (HTTP, base64, validation, batching, the log write) against calling the
   same block in process on one image (target <= 10 ms).

Usage: python benchmarks/inference.py [--images 24] [--seconds 40] [--clients 16]
"""

from __future__ import annotations

import argparse
import base64
import io
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import requests
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parent.parent))
from _workers import cli_in_process as cli
from _workers import cpu_flags

from labelblocks.project import init_project, open_store
from labelblocks.store.keys import create_key


def serve(project: Path, *extra: str) -> tuple[subprocess.Popen[bytes], str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "labelblocks", "--project", str(project), "serve", "--port",
                             str(port), *extra], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            if requests.get(url + "/healthz", timeout=2).ok:
                return proc, url
        except requests.ConnectionError:
            time.sleep(0.2)
    raise SystemExit("the server did not start")


def load(url: str, key: str, model: str, images: list[bytes], clients: int, seconds: float) -> tuple[int, list[float]]:
    bodies = [{"api_key": key, "model_id": model, "image": {"type": "base64", "value": base64.b64encode(d).decode()}}
              for d in images]
    latencies: list[float] = []
    lock = threading.Lock()
    stop = time.perf_counter() + seconds

    def client(k: int) -> None:
        s = requests.Session()
        i = k
        while time.perf_counter() < stop:
            t = time.perf_counter()
            r = s.post(url + "/infer/object_detection", json=bodies[i % len(bodies)], timeout=600)
            r.raise_for_status()
            with lock:
                latencies.append(time.perf_counter() - t)
            i += clients

    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return len(latencies), latencies


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=24)
    ap.add_argument("--seconds", type=float, default=40)
    ap.add_argument("--clients", type=int, default=16)
    args = ap.parse_args()
    print(f"CPU: {cpu_flags()}; {os.cpu_count()} cores")
    work = Path(tempfile.mkdtemp(prefix="lb-bench-inference-"))
    try:
        from tests.blocks.tiny_models import make_owl

        model = make_owl(work / "owl", full_size=True)
        rng = np.random.default_rng(0)
        folder = work / "images"
        folder.mkdir()
        datas = []
        for i in range(args.images):
            buf = io.BytesIO()
            Image.fromarray(rng.integers(0, 255, (480, 640, 3), dtype=np.uint8)).save(buf, format="JPEG")
            (folder / f"frame.{i:03d}.jpg").write_bytes(buf.getvalue())
            datas.append(buf.getvalue())
        project = init_project(work / "p")
        cli(project, "upload", str(folder), "--no-label")
        cli(project, "actions", "create", "boxes", "--step", "owlvit", "-p", f"model={model}",
            "-p", "prompt=a person (person, 0.2)\na car (car, 0.3)", "-p", "delete_existing_bounding_boxes=yes")
        cli(project, "actions", "create", "names", "--step", "relabel", "-p", "mapping=a -> b")
        cli(project, "actions", "publish", "boxes")
        cli(project, "actions", "publish", "names")
        with open_store(project) as store:
            _, key = create_key(store, "bench")
        # the offline peer: actions run over the same images, its model load taken out (a preview
        # of one image costs the same load and one image: the run's extra time is N - 1 images)
        t = time.perf_counter()
        cli(project, "actions", "preview", "boxes", "--limit", "1", "--no-cache")
        one = time.perf_counter() - t
        t = time.perf_counter()
        cli(project, "actions", "run", "boxes", "--all", "--no-cache")
        offline = (args.images - 1) / (time.perf_counter() - t - one)
        print(f"actions run: {offline:.2f} images/s (a preview of one image, model load included: {one:.1f} s)")
        proc, url = serve(project)
        try:
            load(url, key, "boxes/1", datas[:2], 2, 1)  # loads the model
            n, lat = load(url, key, "boxes/1", datas, args.clients, args.seconds)
            served = n / args.seconds
            p = np.percentile(lat, [50, 99]) * 1000
            print(f"served, {args.clients} clients for {args.seconds:.0f} s: {n} images, {served:.2f} images/s; "
                  f"ratio {served / offline:.2f}x actions run (target >= 0.8x); latency p50 {p[0]:.0f} ms, "
                  f"p99 {p[1]:.0f} ms")
            small = io.BytesIO()
            Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(small, format="PNG")
            body = {"api_key": key, "model_id": "names/1",
                    "image": {"type": "base64", "value": base64.b64encode(small.getvalue()).decode()}}
            s = requests.Session()
            for _ in range(20):
                s.post(url + "/infer/object_detection", json=body, timeout=60).raise_for_status()
            times = []
            for _ in range(200):
                t = time.perf_counter()
                s.post(url + "/infer/object_detection", json=body, timeout=60).raise_for_status()
                times.append(time.perf_counter() - t)
        finally:
            proc.terminate()
            proc.wait(timeout=60)
        from labelblocks.blocks import BlockContext, SampleInput
        from labelblocks.builtin_blocks import Relabel
        from labelblocks.inference import image_sample

        block, sample = Relabel(), image_sample(small.getvalue())
        inp = [SampleInput(sample, small.getvalue)]
        block.label(inp, {"mapping": "a -> b"}, BlockContext())
        t = time.perf_counter()
        for _ in range(200):
            block.label(inp, {"mapping": "a -> b"}, BlockContext())
        in_process = (time.perf_counter() - t) / 200
        med = statistics.median(times)
        print(f"overhead, one small image at a time: {med * 1000:.1f} ms per request (p99 "
              f"{np.percentile(times, 99) * 1000:.1f} ms) against {in_process * 1000:.2f} ms in process: "
              f"{(med - in_process) * 1000:.1f} ms of server (target <= 10 ms)")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
