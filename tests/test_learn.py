"""Learn blocks: an anomaly block trained on the project's samples (features cached per file),
its scores reproduced by hand from the served metadata, the protocol's client reading that
metadata, the anomaly block in an action, and training resumed after a kill."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import edgeimpulse_api as ei
import numpy as np
import pytest

from labelblocks.server import BackgroundServer

from .conftest import Cli, kill_when, make_image, project_sql

RATE = 8000


def tone(path: Path, hz: float, seconds: float = 1.0, seed: int = 0, noise: float = 0.02) -> Path:
    """A sine at ``hz`` (``hz`` 0: white noise), as a WAV file."""
    import soundfile as sf

    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * RATE)) / RATE
    wave = np.sin(2 * np.pi * hz * t) * 0.5 if hz else rng.standard_normal(t.size) * 0.3
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, (wave + rng.standard_normal(t.size) * noise).astype("float32"), RATE)
    return path


@pytest.fixture
def tones(cli: Cli, tmp_path: Path) -> Cli:
    """Training: 20 clips of a 300 Hz tone and 20 of a 2 kHz tone (two tight clusters);
    testing: 10 more of each tone (normal) and 5 planted outliers (white noise, and tones at
    other frequencies), labeled anomaly."""
    for i in range(20):
        tone(tmp_path / "train" / f"low.{i}.wav", 300 + i % 3, seed=i)
        tone(tmp_path / "train" / f"high.{i}.wav", 2000 + i % 3, seed=100 + i)
    for i in range(10):
        tone(tmp_path / "test" / f"low.{i}.wav", 301, seed=200 + i)
        tone(tmp_path / "test" / f"high.{i}.wav", 2001, seed=300 + i)
    for i, hz in enumerate([0, 0, 900, 3500, 120]):
        tone(tmp_path / "test" / f"anomaly.{i}.wav", hz, seed=400 + i)
    cli("upload", str(tmp_path / "train"), "--category", "training")
    cli("upload", str(tmp_path / "test"), "--category", "testing")
    return cli


def test_planted_outliers_score_above_the_suggested_threshold(tones: Cli) -> None:
    cli = tones
    out = cli.json("learn", "anomaly", "--features", "audio-spectral", "--clusters", "2")
    meta = out["metadata"]
    assert out["trainingSamples"] == 40 and len(meta["clusters"]) == 2 and meta["axes"] == list(range(32))
    [t] = meta["thresholds"]
    assert t["key"] == "min_anomaly_score" and "maximises F1" in t["suggestedValueText"]
    m = meta["modelValidationMetrics"][0]
    preds = {p["sampleId"]: p for p in m["predictions"]}
    samples = {s["id"]: s for s in cli.json("samples", "list", "--category", "testing")}
    assert len(preds) == 25
    outliers = {sid for sid, s in samples.items() if s["label"] == "anomaly"}
    score = {sid: max(w[0] for w in p["anomalyScores"]) for sid, p in preds.items()}
    assert all(score[sid] >= t["suggestedValue"] for sid in outliers)
    assert all(score[sid] < t["suggestedValue"] for sid in preds if sid not in outliers)
    assert m["confusionMatrix"] == [[5, 0], [0, 20]] and m["accuracy"] == 1.0  # rows truth: anomaly, normal
    ei.models.KerasModelMetadataMetrics.from_dict(m)
    # without labeled anomalies, the 99th percentile of the training scores
    cli("samples", "label", *[str(s) for s in outliers][:1], "--label", "noise")
    plain = cli.json("learn", "anomaly", "--features", "audio-spectral", "--clusters", "2", "--anomaly-label",
                     "nothing-is")["metadata"]["thresholds"][0]
    assert "99th percentile of the 40 training samples" in plain["suggestedValueText"]


def test_served_metadata_reproduces_the_scores_by_hand(tones: Cli) -> None:
    cli = tones
    learn_id = cli.json("learn", "anomaly", "--features", "audio-spectral", "--clusters", "3", "--axes", "0-15,20")["id"]
    key = cli.json("keys", "create")["key"]
    with BackgroundServer(cli.project) as srv:
        api = ei.LearnApi(ei.ApiClient(ei.Configuration(host=srv.url, api_key={"ApiKeyAuthentication": key})))
        got = api.get_anomaly_metadata(1, learn_id)  # the protocol's own client
        assert got.success and len(got.clusters) == 3 and got.axes == [*range(16), 20]
        assert got.thresholds[0].suggested_value == pytest.approx(got.default_minimum_confidence_rating)
        import requests

        doc = requests.get(f"{srv.url}/api/1/training/anomaly/{learn_id}/metadata", headers={"x-api-key": key},
                           timeout=30).json()
        # every field validated by the bindings' model (thresholds' value aside: see the route)
        ei.models.AnomalyModelMetadataResponse.parse_obj({**doc, "thresholds": []})
        assert api.api_client.call_api
        with pytest.raises(ei.exceptions.ApiException) as e:
            api.get_anomaly_metadata(1, 999)
        assert e.value.status == 404
    mean, scale = np.array(doc["mean"]), np.array(doc["scale"])
    centers = np.array([c["center"] for c in doc["clusters"]])
    max_error = np.array([c["maxError"] for c in doc["clusters"]])
    for p in doc["modelValidationMetrics"][0]["predictions"][:8]:
        feats = cli.json("learn", "features", str(learn_id), str(p["sampleId"]))
        x = np.array(feats["features"])[:, doc["axes"]]
        z = (x - mean) / scale
        by_hand = (np.linalg.norm(z[:, None, :] - centers[None], axis=2) - max_error).min(axis=1)
        assert by_hand == pytest.approx([w[0] for w in p["anomalyScores"]], abs=1e-4)
        assert feats["anomalyScore"] == pytest.approx(by_hand.max(), abs=1e-4)


def test_retraining_computes_no_features_and_bad_input(tones: Cli) -> None:
    cli = tones
    first = cli.json("learn", "anomaly", "--features", "audio-spectral", "--clusters", "2")
    assert first["params"]["computed"] == 65
    again = cli.json("learn", "anomaly", "--features", "audio-spectral", "--clusters", "4", "--axes", "0-7")
    assert again["params"]["computed"] == 0  # every file's features came from the cache
    other = cli.json("learn", "anomaly", "--features", "audio-spectral", "-f", "bands=16", "--clusters", "2")
    assert other["params"]["computed"] == 65  # other parameters: other features
    for args, message in [
        (["--clusters", "500"], "fewer than the 500 clusters"),
        (["--axes", "40"], "--axes: indices from 0 to 31"),
        (["--features", "smell"], "no feature extractor named 'smell'"),
        (["--features", "image-embedding"], "no image samples to train on"),
        (["-f", "colour=red"], "unknown parameter(s) colour"),
    ]:
        r = cli("learn", "anomaly", "--features", "audio-spectral", *args, expect=1) if args[0] != "--features" \
            else cli("learn", "anomaly", *args, expect=1)
        assert message in r.output, r.output
    assert len(cli.json("learn", "list")) == 3  # nothing half-stored
    assert "no learn block 9" in cli("learn", "show", "9", expect=1).output
    cli("learn", "delete", str(first["id"]))
    assert len(cli.json("learn", "list")) == 2


def test_the_anomaly_block_in_a_two_step_action(tones: Cli) -> None:
    cli = tones
    learn_id = cli.json("learn", "anomaly", "--features", "audio-spectral", "--clusters", "2")["id"]
    cli("actions", "create", "outliers", "--step", "anomaly", "-p", f"learn-id={learn_id}", "-p", "label=odd",
        "--step", "relabel", "-p", "mapping=odd -> check-me", "--category", "testing")
    job = cli.json("actions", "preview", "outliers", "--limit", "100")["jobId"]
    ranked = cli.json("proposals", "show", str(job), "--sort-by", "anomaly_score")["proposedChanges"]
    first = [p["sampleId"] for p in ranked if p["step"] == 1][:5]
    names = {s["id"]: s["filename"] for s in cli.json("samples", "list")}
    assert all(names[sid].startswith("anomaly.") for sid in first)  # the outliers first
    cli("proposals", "apply", str(job))
    flagged = cli.json("samples", "list", "--where", "anomaly=true")
    assert {s["filename"] for s in flagged} == {f"anomaly.{i}.wav" for i in range(5)}
    assert {s["label"] for s in flagged} == {"check-me"}
    assert all(float(s["metadata"]["anomaly_score"]) < 0 or s["metadata"]["anomaly"] == "false"
               for s in cli.json("samples", "list", "--where", "anomaly=false"))
    # an image in the selection of an audio learn block fails alone, saying why
    make_image(cli.project.parent / "img" / "pic.png")
    cli("upload", str(cli.project.parent / "img"), "--category", "testing")
    r = cli.json("actions", "preview", "outliers", "--limit", "100", expect=1)
    assert r["failed"] == 1 and "scores audio samples" in str(cli.json("jobs", "show", str(r["jobId"])))


def test_image_embedding_with_a_clip_checkpoint(cli: Cli, tmp_path: Path) -> None:
    """The default image extractor's real loading code on a tiny random CLIP checkpoint."""
    pytest.importorskip("transformers")
    from .blocks.tiny_models import make_clip

    model = make_clip(tmp_path / "clip")
    for i in range(12):
        make_image(tmp_path / "im" / f"frame.{i}.png", size=(40, 30), seed=i)
    cli("upload", str(tmp_path / "im"), "--category", "training")
    out = cli.json("learn", "anomaly", "--clusters", "3", "-f", f"model={model}", "-f", "precision=fp32")
    assert out["trainingSamples"] == 12 and out["params"]["dim"] == 16 and out["params"]["computed"] == 12
    feats = cli.json("learn", "features", str(out["id"]), "1")["features"]
    from transformers import CLIPModel, CLIPProcessor

    from labelblocks.media import open_image

    clip, proc = CLIPModel.from_pretrained(model), CLIPProcessor.from_pretrained(model)
    data = (tmp_path / "im" / "frame.0.png").read_bytes()
    import torch

    with torch.no_grad():
        expected = clip.get_image_features(**proc(images=[open_image(data)], return_tensors="pt"))
    expected = getattr(expected, "pooler_output", expected)
    assert np.allclose(feats[0], expected[0].numpy(), atol=1e-4)


def test_training_resumes_after_a_kill(cli: Cli, tmp_path: Path) -> None:
    for i in range(400):
        tone(tmp_path / "many" / f"t.{i}.wav", 200 + 10 * (i % 50), seconds=2.0, seed=i)
    cli("upload", str(tmp_path / "many"), "--category", "training")
    proc = subprocess.Popen([sys.executable, "-m", "labelblocks", "--project", str(cli.project), "learn", "anomaly",
                             "--features", "audio-spectral", "-f", "window-ms=250", "--clusters", "4"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    kill_when(proc, cli.project, "SELECT count(*) FROM features", 64)
    assert proc.returncode != 0 and cli.json("learn", "list") == []  # nothing half-stored

    done = project_sql(cli.project).execute(
        "SELECT count(*) FROM features").fetchone()[0]
    assert 64 <= done < 400
    out = cli.json("learn", "anomaly", "--features", "audio-spectral", "-f", "window-ms=250", "--clusters", "4")
    assert out["params"]["computed"] == 400 - done  # the rest only


def test_an_unreadable_file_fails_alone(tones: Cli, tmp_path: Path) -> None:
    from .conftest import corrupt_stored_copy

    broken = tone(tmp_path / "bad" / "low.broken.wav", 300, seed=999)
    tones("upload", str(tmp_path / "bad"), "--category", "training")
    corrupt_stored_copy(tones.project, broken, b"RIFF\x00\x00\x00\x00WAVEnot audio")
    r = tones("learn", "anomaly", "--features", "audio-spectral", "--clusters", "2")
    assert "1 samples could not be read and were left out" in r.stderr
    out = tones.json("learn", "show", "1")
    assert out["trainingSamples"] == 40 and len(out["params"]["failed"]) == 1


def test_a_jpeg_is_decoded_at_a_reduced_scale_never_below_the_models_size() -> None:
    import io as _io

    from PIL import Image

    from labelblocks.media import open_image

    buf = _io.BytesIO()
    Image.new("RGB", (800, 600), (200, 30, 40)).save(buf, format="JPEG")
    full = open_image(buf.getvalue())
    small = open_image(buf.getvalue(), min_side=224)
    assert full.size == (800, 600) and small.size == (400, 300)  # 1/2 scale: 1/4 would be under 224
    assert small.getpixel((10, 10)) == pytest.approx(full.getpixel((10, 10)), abs=3)
    png = _io.BytesIO()
    Image.new("RGB", (800, 600)).save(png, format="PNG")
    assert open_image(png.getvalue(), min_side=224).size == (800, 600)  # only JPEG has a cheaper scale


@pytest.mark.parametrize(("shortest", "crop"), [(224, 224), (256, 224), (32, 30)])
def test_the_extractors_own_preprocessing_gives_the_processors_pixels(shortest: int, crop: int) -> None:
    """image-embedding resizes, crops and normalises a CLIP-like processor's way itself
    (cheaper); the pixels are the processor's, for every shape, mode and format."""
    import io as _io

    from PIL import Image
    from transformers import CLIPImageProcessor, ViTImageProcessor

    from labelblocks.builtin_features import pil_steps
    from labelblocks.media import open_image

    processor = CLIPImageProcessor(size={"shortest_edge": shortest}, crop_size={"height": crop, "width": crop})
    steps = pil_steps(processor)
    assert steps is not None
    rng = np.random.default_rng(0)
    for (w, h), fmt, mode in [((640, 480), "JPEG", "RGB"), ((480, 640), "PNG", "RGB"), ((100, 37), "PNG", "L"),
                              ((33, 300), "PNG", "RGBA"), ((shortest, shortest), "JPEG", "RGB"),
                              ((1001, 999), "JPEG", "RGB")]:
        buf = _io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).convert(mode).save(buf, format=fmt)
        theirs = processor(images=[open_image(buf.getvalue(), min_side=shortest)], return_tensors="pt")["pixel_values"]
        ours = steps.pixels([steps.crop_image(buf.getvalue())])
        assert tuple(ours.shape) == tuple(theirs.shape) == (1, 3, crop, crop)
        assert float((ours - theirs).abs().max()) < 1e-5, (w, h, fmt, mode)
    # other processors (a fixed height and width, no crop) are called as they are
    assert pil_steps(ViTImageProcessor(size={"height": 224, "width": 224})) is None
    assert pil_steps(CLIPImageProcessor(size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224},
                                        do_normalize=False)) is None


def test_decoding_threads_on_the_cpu_run_at_the_lowest_priority() -> None:
    """They use what the model's threads leave idle instead of slowing them."""
    import os
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from labelblocks.accel import lowest_priority

    def nice() -> int:
        return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())

    with ThreadPoolExecutor(1, initializer=lowest_priority) as pool:
        assert pool.submit(nice).result() == 19
    assert nice() == os.getpriority(os.PRIO_PROCESS, 0) != 19  # the calling thread keeps its own
