"""AudioSet block benchmark.

A full-size Audio Spectrogram Transformer (AudioSet: 1024 frames x 128 mel bins, 527 classes;
random weights, the same compute as the trained model) on 60 clips of 10 s (16 kHz WAV) in a
real project, each measurement in its own process:

- `labelblocks actions run` of an audioset action (2 s windows, stride 2 s: 5 windows a clip;
  precision auto), windows/s of the run after the model is loaded (the load is reported apart),
  and the real-time factor (seconds of audio labeled per second);
- transformers' audio-classification pipeline called once per window (the common way), in its
  default precision (fp32), on --pipeline-windows windows;
- the floor: the bare batched model forward on prepared features (batch 8) in the run's
  precision (what `precision auto` picks: bf16 autocast on GPUs and on CPUs with AMX or
  AVX512-BF16, fp32 elsewhere), and once in the other of bf16 / fp32.

labelblocks, the floor and the pipeline are measured alternately, --repeat times each (medians).
Targets: >= 3x the per-window pipeline; >= 90% of the bare batched bf16 forward.

With --device cuda the same measurements run on the GPU, and --batch-sizes 1,16,64 adds the
run and the forward at each batch size.

Usage: python benchmarks/audioset.py [--clips 60] [--pipeline-windows 16] [--repeat 2]
       python benchmarks/audioset.py --device cuda --clips 300 --batch-sizes 1,16,64
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from _workers import cli, median, peak_mb, run_worker, timed_action_run, timed_batches  # noqa: E402

RATE = 16000
WINDOW_S = 2.0


def make_clips(folder: Path, n: int, seconds: float = 10.0) -> None:
    import numpy as np
    import soundfile as sf

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    t = np.arange(int(seconds * RATE)) / RATE
    for i in range(n):
        x = 0.3 * np.sin(2 * np.pi * (150 + 20 * i) * t) * (1 + np.sin(2 * np.pi * 0.5 * t)) / 2
        sf.write(folder / f"night.{i:03d}.wav", (x + rng.normal(0, 0.05, len(t))).astype("float32"), RATE)


def windows(folder: Path, n: int) -> list[Any]:
    import soundfile as sf

    out: list[Any] = []
    size = int(WINDOW_S * RATE)
    for p in sorted(folder.glob("*.wav")):
        audio, _ = sf.read(p, dtype="float32")
        out.extend(audio[i : i + size] for i in range(0, len(audio), size))
        if len(out) >= n:
            break
    return out[:n]


def worker_ours(work: Path, action: str = "tags") -> dict[str, Any]:
    from labelblocks_audioset.block import AudioSet

    r = timed_action_run(work / "project", action, AudioSet)
    r["windows"] = r.pop("summary")["usage"]["windows"]
    return r


def worker_pipeline(work: Path, n: int, device: str = "cpu") -> dict[str, Any]:
    from transformers import pipeline

    pipe = pipeline("audio-classification", model=str(work / "model"), device=0 if device == "cuda" else -1)
    wins = windows(work / "clips", n + 1)
    pipe(wins[-1])  # warm-up, not timed
    t = time.perf_counter()
    for w in wins[:n]:
        pipe(w)
    return {"seconds": time.perf_counter() - t, "windows": n, "peak_mb": peak_mb()}


def worker_floor(work: Path, precision: str, n: int, batch: int, device: str = "cpu") -> dict[str, Any]:
    import torch
    from transformers import AutoFeatureExtractor, AutoModelForAudioClassification

    from labelblocks.accel import autocast

    extractor = AutoFeatureExtractor.from_pretrained(work / "model")
    model = AutoModelForAudioClassification.from_pretrained(work / "model").eval().to(device)
    feats = torch.from_numpy(extractor(windows(work / "clips", n), sampling_rate=RATE,
                                       return_tensors="np")["input_values"]).to(device)

    def forward(x: Any) -> None:
        with torch.inference_mode(), autocast(device, precision):
            torch.sigmoid(model(input_values=x).logits.float()).cpu()  # results back on the host, as the block has them

    return {"seconds": timed_batches(forward, feats, batch), "windows": n, "peak_mb": peak_mb()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clips", type=int, default=60)
    ap.add_argument("--pipeline-windows", type=int, default=16)
    ap.add_argument("--floor-windows", type=int, default=48)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--repeat", type=int, default=2,
                    help="alternated runs of labelblocks, the bf16 forward and the per-window pipeline")
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--batch-sizes", default="", help="also measure the run and the bf16 forward at these batch sizes")
    ap.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("what", nargs="*", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        kind, *rest = a.what
        if kind == "ours":
            res = worker_ours(a.worker, *rest)
        elif kind == "pipeline":
            res = worker_pipeline(a.worker, int(rest[0]), rest[1])
        else:
            res = worker_floor(a.worker, rest[0], int(rest[1]), int(rest[2]), rest[3])
        print(json.dumps(res))
        return

    from labelblocks.accel import pick_precision
    from tests.blocks.tiny_models import make_ast

    with tempfile.TemporaryDirectory(prefix="lb-audioset-") as tmp:
        work = Path(tmp)
        make_ast(work / "model", full_size=True)
        make_clips(work / "clips", a.clips)
        dev = a.device
        prec = pick_precision("auto", dev)  # the run's precision: the floor runs in it too
        other = "fp32" if prec != "fp32" else "bf16"
        where = torch_device_name(dev)
        print(f"full-size AST (random weights); {a.clips} clips of 10 s; windows {WINDOW_S:g} s; batch {a.batch_size}; "
              f"{where}; precision auto = {prec}")
        cli(work / "project", "init", str(work / "project"))
        cli(work / "project", "upload", str(work / "clips"), "--no-label")
        sizes = [a.batch_size, *(int(b) for b in a.batch_sizes.split(",") if b and int(b) != a.batch_size)]
        for bs in sizes:
            cli(work / "project", "actions", "create", f"tags{bs}", "--step", "audioset", "-p", f"model={work / 'model'}",
                "-p", "audioset-labels=Speech\nDog\nMusic", "-p", f"batch-size={bs}", "-p", f"device={dev}")
        ours: list[dict[str, Any]] = []
        floor: list[dict[str, Any]] = []
        pipes: list[dict[str, Any]] = []
        for _ in range(a.repeat):  # alternated: this machine's speed drifts by ~10 %
            r = run_worker(__file__, work, "ours", f"tags{a.batch_size}")
            r["rate"] = r["windows"] / r["labeling"]
            ours.append(r)
            r = run_worker(__file__, work, "floor", prec, str(a.floor_windows), str(a.batch_size), dev)
            r["rate"] = r["windows"] / r["seconds"]
            floor.append(r)
            r = run_worker(__file__, work, "pipeline", str(a.pipeline_windows), dev)
            r["rate"] = r["windows"] / r["seconds"]
            pipes.append(r)
        # the other precision, once, on fewer windows (bf16 on a CPU without it is emulated: slow)
        alt = run_worker(__file__, work, "floor", other, str(min(a.floor_windows, 8)), str(a.batch_size), dev)
        alt["rate"] = alt["windows"] / alt["seconds"]
        per_size = []
        for bs in sizes[1:]:
            r = run_worker(__file__, work, "ours", f"tags{bs}")
            f_bs = run_worker(__file__, work, "floor", prec, str(max(a.floor_windows, 2 * bs)), str(bs), dev)
            per_size.append((bs, r["windows"] / r["labeling"], f_bs["windows"] / f_bs["seconds"]))

    o, f, pipe = median(ours), median(floor), median(pipes)
    print()
    print(f"{'measurement':44} {'windows/s':>10} {'peak MB':>8}  notes")
    print(f"{'labelblocks actions run (auto precision)':44} {o['rate']:10.2f} {o['peak_mb']:8.0f}  "
          f"{o['windows']} windows; model load {o['setup']:.1f} s; whole command {o['seconds']:.1f} s "
          f"= {o['windows'] / o['seconds']:.2f} windows/s")
    print(f"{'pipeline per window, fp32 (default)':44} {pipe['rate']:10.2f} {pipe['peak_mb']:8.0f}  "
          f"{pipe['windows']} windows")
    floor_name, alt_name = f"bare batched forward, {prec} (as the run)", f"bare batched forward, {other}"
    print(f"{floor_name:44} {f['rate']:10.2f} {f['peak_mb']:8.0f}")
    print(f"{alt_name:44} {alt['rate']:10.2f} {alt['peak_mb']:8.0f}  {alt['windows']} windows")
    print()
    print(f"vs per-window pipeline:      {o['rate'] / pipe['rate']:6.2f}x   (target >= 3x; pipeline runs "
          f"{[round(r['rate'], 2) for r in pipes]} windows/s)")
    print(f"vs bare batched {prec}:        {o['rate'] / f['rate']:6.1%}   (target >= 90%; runs: labelblocks "
          f"{[round(r['rate'], 2) for r in ours]}, forward {[round(r['rate'], 2) for r in floor]} windows/s)")
    print(f"real-time factor:            {o['rate'] * WINDOW_S:6.1f} s of audio per second "
          f"({o['windows'] * WINDOW_S / o['seconds']:.1f} with model load)")
    for bs, rate, frate in per_size:
        print(f"batch {bs:>3}: labelblocks actions run {rate:8.2f} windows/s; bare {prec} forward {frate:8.2f} windows/s "
              f"({rate / frate:.0%})")


def torch_device_name(device: str) -> str:
    import torch

    if device == "cuda":
        return torch.cuda.get_device_name(0)
    return f"{os.cpu_count()} CPUs"


if __name__ == "__main__":
    main()
