"""Anomaly learn block benchmark.

1. Training on N samples (default 100,000) of 512-dimensional cached features (the
   image-embedding extractor's cache, filled here): `labelblocks learn anomaly` end to end,
   in-process, against the floor: one SQL query reading the same features, then scikit-learn's
   StandardScaler and KMeans (the same clusters, seed and n_init) on the array in memory.
   Target: <= 1.5x the floor.
2. Scoring: the anomaly block's label() over the same samples in its batches (features read
   from the cache, scored), against numpy scoring of the same array in memory (and, for
   reference, against the raw read plus numpy scoring), rounds alternated, the median of the
   rounds' ratios. Target: >= 0.5x the numpy throughput.
3. Feature extraction with a full-size CLIP ViT-B/32 image tower (random weights: the compute
   of the trained model) on M images (default 128, 640x480 JPEG) of a project: images/s of
   the features as `learn anomaly` computes them (labelblocks.learn.compute_features: files
   read, decoded, preprocessed and run, features cached) against the bare batched forward of
   the same model on pixel tensors prepared beforehand, the model loaded before either is
   timed. Target: >= 90%. This machine's throughput drifts by a quarter within a minute, so
   each round is one batch: the bare forward of its pixels, then its features computed as
   `learn anomaly` does (nothing cached), then the bare forward again; the median of the
   rounds' ratios (--repeats times every batch) is the figure. The extractor called a batch at a time
   (extract) is printed too.

Usage: python benchmarks/anomaly.py [--samples 100000] [--images 128] [--repeats 5] [--clusters 32]
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parent.parent))
from _workers import cpu_flags, insert_samples

from labelblocks.blocks import BlockContext, SampleInput
from labelblocks.builtin_blocks import Anomaly
from labelblocks.filters import SampleFilter
from labelblocks.learn import DEFAULT_CLUSTERS, extractor, load, train_anomaly
from labelblocks.model import Sample
from labelblocks.project import init_project, open_store
from labelblocks.store.learn import save_features

DIM = 512


def seed(project: Path, n: int, key: str) -> None:
    """Untimed: ``n`` image samples (distinct contents) and their cached features: 40
    Gaussian blobs in 512 dimensions."""
    rng = np.random.default_rng(0)
    centers = rng.normal(0, 3, (40, DIM)).astype(np.float32)
    insert_samples(project / ".labelblocks" / "project.db", ((i, None, "[]", f"{i:064x}") for i in range(1, n + 1)),
                   64, 64)
    with open_store(project) as store:
        for start in range(0, n, 20_000):
            ids = range(start + 1, min(n, start + 20_000) + 1)
            which = rng.integers(0, len(centers), len(ids))
            vecs = centers[which] + rng.normal(0, 1, (len(ids), DIM)).astype(np.float32)
            save_features(store, key, {f"{i:064x}": vecs[k : k + 1] for k, i in enumerate(ids)})


def floor_training(db: Path, key: str, clusters: int) -> float:
    from sklearn.cluster import KMeans
    from sklearn.preprocessing import StandardScaler

    con = sqlite3.connect(db)
    t = time.perf_counter()
    rows = con.execute("SELECT data FROM features WHERE extractor_key = ?", (key,)).fetchall()
    x = np.frombuffer(b"".join(r[0] for r in rows), dtype=np.float32).reshape(len(rows), DIM).astype(np.float64)
    z = StandardScaler().fit_transform(x)
    KMeans(n_clusters=clusters, random_state=0, n_init=3).fit(z)
    dt = time.perf_counter() - t
    con.close()
    return dt


def ours_training(project: Path, clusters: int) -> tuple[float, int]:
    with open_store(project) as store:
        t = time.perf_counter()
        record = train_anomaly(store, "image-embedding", clusters=clusters)
        return time.perf_counter() - t, record.id


def scoring(project: Path, learn_id: int, key: str, repeats: int) -> list[tuple[float, float, float]]:
    """Per round (the three alternated: this machine's throughput drifts within a minute),
    samples/s of the anomaly block, of numpy scoring on the array in memory, and of the raw
    read plus numpy scoring."""
    rounds = []
    with open_store(project) as store:
        model = load(store, learn_id)
        samples = [Sample(id=sid, filename=f"img{sid}.png", width=64, height=64, content_hash=h)
                   for sid, h in store.scan(SampleFilter(), "content_hash")]
        block = Anomaly()
        context = BlockContext(learned=lambda _id: model)
        args = {"learn-id": learn_id}
        db = project / ".labelblocks" / "project.db"
        m = model.model
        for _ in range(repeats):
            t = time.perf_counter()
            for start in range(0, len(samples), Anomaly.default_batch_size):
                batch = [SampleInput(s, bytes) for s in samples[start : start + Anomaly.default_batch_size]]
                block.label(batch, args, context)
            ours = time.perf_counter() - t
            con = sqlite3.connect(db)
            t = time.perf_counter()
            rows = con.execute("SELECT data FROM features WHERE extractor_key = ?", (key,)).fetchall()
            x = np.frombuffer(b"".join(r[0] for r in rows), dtype=np.float32).reshape(len(rows), DIM)
            read = time.perf_counter() - t
            con.close()
            t = time.perf_counter()
            z = (x.astype(np.float64)[:, m.axes] - m.mean) / m.scale
            sq = (z * z).sum(1)[:, None] - 2 * z @ m.centers.T + (m.centers**2).sum(1)[None, :]
            (np.sqrt(np.maximum(sq, 0)) - m.max_error).min(1)
            numpy_only = time.perf_counter() - t
            n = len(samples)
            rounds.append((n / ours, n / numpy_only, n / (numpy_only + read)))
    return rounds


def extraction(images: int, repeats: int) -> list[tuple[float, float, float]]:
    """Per round, (images/s of the features `learn anomaly` computes, as it computes them:
    the project's files read, decoded, preprocessed and run, and cached; images/s of the
    extractor called on the batch; images/s of the bare forward of the batch, the mean of one
    measured before and one after). A round is one batch."""
    import torch
    from PIL import Image

    from labelblocks.learn import compute_features
    from labelblocks.media import open_image
    from labelblocks.project import open_store
    from labelblocks.store.dialect import run
    from labelblocks.uploads import UploadItem, upload
    from tests.blocks.tiny_models import make_clip

    work = Path(tempfile.mkdtemp())
    try:
        folder = make_clip(work / "clip", full_size=True)
        rng = np.random.default_rng(0)
        datas = []
        for _ in range(images):
            buf = io.BytesIO()
            Image.fromarray(rng.integers(0, 255, (480, 640, 3), dtype=np.uint8)).save(buf, format="JPEG", quality=90)
            datas.append(buf.getvalue())
        params = {"model": str(folder), "precision": "fp32"}
        ex = extractor("image-embedding", params)
        ex.ready()  # the model loaded once, outside every timing (as the bare forward's)
        bs = ex.batch_size
        ex.extract(datas[:bs])  # warm-up
        pixels = [ex.processor(images=[open_image(d) for d in datas[s : s + bs]], return_tensors="pt")["pixel_values"]
                  for s in range(0, images, bs)]

        def bare(k: int) -> float:
            with torch.no_grad():
                t = time.perf_counter()
                ex.model.get_image_features(pixel_values=pixels[k])
                return len(pixels[k]) / (time.perf_counter() - t)

        project = init_project(work / "p")
        rounds = []
        with open_store(project) as store:
            upload(store, [UploadItem(source=f"i{i}.jpg", name=f"i{i}.jpg", data=d) for i, d in enumerate(datas)])
            rows = [(int(r[0]), r[1]) for r in store.scan(SampleFilter(), "content_hash")]
            for _ in range(repeats):
                for k in range(len(pixels)):  # a round per batch: the least drift between ratio's terms
                    part = rows[k * bs : (k + 1) * bs]
                    before = bare(k)
                    with store.transaction() as conn:  # nothing cached: every feature computed
                        run(conn, "DELETE FROM features WHERE extractor_key = ?", (ex.key(),))
                    t = time.perf_counter()
                    got = compute_features(store, ex, part)
                    ours = len(part) / (time.perf_counter() - t)
                    assert got.computed == len(part) and not got.failed
                    t = time.perf_counter()
                    ex.extract(datas[k * bs : (k + 1) * bs])
                    plain = len(part) / (time.perf_counter() - t)
                    rounds.append((ours, plain, (before + bare(k)) / 2))
        return rounds
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", type=int, default=100_000)
    ap.add_argument("--images", type=int, default=128)
    ap.add_argument("--clusters", type=int, default=DEFAULT_CLUSTERS)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    print(f"CPU: {cpu_flags()}; {os.cpu_count()} cores")
    work = Path(tempfile.mkdtemp(prefix="lb-bench-anomaly-"))
    try:
        if args.samples:
            project = init_project(work / "p")
            key = extractor("image-embedding").key()
            t = time.perf_counter()
            seed(project, args.samples, key)
            print(f"seeded {args.samples:,} samples with {DIM}-value features in {time.perf_counter() - t:.0f} s")
            ours, floors, learn_id = [], [], 0
            for _ in range(args.repeats):
                dt, learn_id = ours_training(project, args.clusters)
                ours.append(dt)
                floors.append(floor_training(project / ".labelblocks" / "project.db", key, args.clusters))
            o, f = statistics.median(ours), statistics.median(floors)
            print(f"training, {args.clusters} clusters: learn anomaly {o:.2f} s (runs {', '.join(f'{x:.2f}' for x in ours)})"
                  f"; read + StandardScaler + KMeans {f:.2f} s; ratio {o / f:.2f}x (target <= 1.5x)")
            rounds = scoring(project, learn_id, key, max(3, args.repeats))
            ratios = [b / f for b, f, _ in rounds]
            print(f"scoring {args.samples:,} samples, {len(rounds)} rounds: the anomaly block "
                  f"{statistics.median(b for b, _, _ in rounds):,.0f} samples/s; numpy on the array in memory "
                  f"{statistics.median(f for _, f, _ in rounds):,.0f}/s; median of the rounds' ratios "
                  f"{statistics.median(ratios):.2f}x (target >= 0.5x; rounds {', '.join(f'{r:.2f}x' for r in ratios)})"
                  f"; against the raw read + numpy {statistics.median(b / r for b, _, r in rounds):.2f}x")
        if args.images:
            rounds = extraction(args.images, args.repeats)
            ratios = [o / b for o, _, b in rounds]
            plain = [p / b for _, p, b in rounds]
            print(f"image-embedding, full-size CLIP ViT-B/32 (fp32), {args.images} images, {len(rounds)} rounds "
                  f"of a batch: as `learn anomaly` computes them {statistics.median(o for o, _, _ in rounds):.1f} images/s; "
                  f"bare batched forward {statistics.median(b for _, _, b in rounds):.1f} images/s; median of the "
                  f"rounds' ratios {100 * statistics.median(ratios):.0f}% (target >= 90%; rounds "
                  f"{', '.join(f'{100 * r:.0f}%' for r in ratios)})")
            print(f"  (the extractor called a batch at a time: {100 * statistics.median(plain):.0f}% of the bare forward)")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
