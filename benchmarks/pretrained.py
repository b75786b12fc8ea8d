"""Pretrained block benchmark: a YOLOS-small-sized detector with random weights (the compute of
the trained model; transformers builds it without a download) on N images (default 64,
640x480): images/s of `labelblocks actions run` with the pretrained block, against
transformers' object-detection pipeline called per image (target >= 2x) and against the bare
batched forward on pixel tensors prepared beforehand, in the block's precision (target >=
90%). ``--precision auto`` (the block's default) is bf16 on CPUs with AMX or AVX512-BF16 and
fp32 elsewhere; the pipeline is timed as transformers runs it by default (fp32) and, for the
record, under the same bf16 autocast.

Usage: python benchmarks/pretrained.py [--images 64] [--batch-size 8] [--precision auto|fp32|bf16]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parent.parent))
from _workers import cli_in_process as cli
from _workers import cpu_flags

from labelblocks.project import init_project


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"])
    args = ap.parse_args()
    print(f"CPU: {cpu_flags()}; {os.cpu_count()} cores")
    work = Path(tempfile.mkdtemp(prefix="lb-bench-pretrained-"))
    try:
        import torch
        from transformers import AutoImageProcessor, AutoModelForObjectDetection, pipeline

        from tests.blocks.tiny_models import make_yolos

        model = make_yolos(work / "yolos", full_size=True)
        rng = np.random.default_rng(0)
        folder = work / "images"
        folder.mkdir()
        images = []
        for i in range(args.images):
            im = Image.fromarray(rng.integers(0, 255, (480, 640, 3), dtype=np.uint8))
            im.save(folder / f"frame.{i:03d}.jpg", quality=90)
            images.append(im)
        project = init_project(work / "p")
        cli(project, "upload", str(folder), "--no-label")
        cli(project, "actions", "create", "det", "--step", "pretrained", "-p", f"model={model}", "-p",
            "min-confidence=0.5", "-p", f"batch-size={args.batch_size}", "-p", f"precision={args.precision}")
        t = time.perf_counter()
        cli(project, "actions", "preview", "det", "--limit", "1", "--no-cache")
        one = time.perf_counter() - t
        t = time.perf_counter()
        cli(project, "actions", "run", "det", "--no-cache")
        ours = (args.images - 1) / (time.perf_counter() - t - one)
        from labelblocks.accel import autocast, pick_precision

        precision = pick_precision(args.precision, "cpu")
        pipe = pipeline("object-detection", model=str(model), threshold=0.5)
        pipe(images[0])
        t = time.perf_counter()
        for im in images:
            pipe(im)
        per_image = args.images / (time.perf_counter() - t)
        per_image_same = per_image
        if precision != "fp32":
            with autocast("cpu", precision):
                pipe(images[0])
                t = time.perf_counter()
                for im in images:
                    pipe(im)
                per_image_same = args.images / (time.perf_counter() - t)
        processor = AutoImageProcessor.from_pretrained(model, backend="pil")
        net = AutoModelForObjectDetection.from_pretrained(model).eval()
        batches = [processor(images=images[i : i + args.batch_size], return_tensors="pt")["pixel_values"]
                   for i in range(0, args.images, args.batch_size)]
        with torch.no_grad(), autocast("cpu", precision):
            net(pixel_values=batches[0])
            t = time.perf_counter()
            for b in batches:
                net(pixel_values=b)
            bare = args.images / (time.perf_counter() - t)
        print(f"pretrained (YOLOS-small size, {precision}, batch {args.batch_size}), {args.images} images 640x480: "
              f"actions run {ours:.2f} images/s (model load taken out: {one:.1f} s for it and one image)")
        print(f"  pipeline per image (fp32, its default) {per_image:.2f} images/s: ratio {ours / per_image:.2f}x "
              "(target >= 2x)")
        if precision != "fp32":
            print(f"  pipeline per image under the same {precision} autocast {per_image_same:.2f} images/s: "
                  f"ratio {ours / per_image_same:.2f}x")
        print(f"  bare batched forward ({precision}) {bare:.2f} images/s: {100 * ours / bare:.0f}% (target >= 90%)")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
