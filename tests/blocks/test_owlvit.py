"""The owlvit block on tiny random-initialised OWL-ViT and OWLv2 checkpoints built here."""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from labelblocks.blocks import BlockContext, SampleFailure, SampleInput
from labelblocks.model import BoundingBox, Sample, SampleChange
from labelblocks_owlvit.block import Filters, OwlVit, Preprocessor, Query, detections, kept_boxes, nms, parse_prompt
from tests.blocks.tiny_models import make_owl
from tests.conftest import Cli, corrupt_stored_copy, make_image

pytest.importorskip("transformers")

PROMPT = "a cat (cat, 0.6)\ndog (dog, 0.6)\na red car (car, 0.7)"


@pytest.fixture(scope="module")
def owlvit(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_owl(tmp_path_factory.mktemp("owlvit"))


@pytest.fixture(scope="module")
def owlv2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_owl(tmp_path_factory.mktemp("owlv2"), v2=True)


def rgb(w: int, h: int, seed: int) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8), "RGB")


def inputs(images: Sequence[Image.Image | bytes]) -> list[SampleInput]:
    out = []
    for i, img in enumerate(images):
        if isinstance(img, bytes):
            data = img
        else:
            buf = io.BytesIO()
            img.save(buf, format="PNG")
            data = buf.getvalue()
        s = Sample(id=i + 1, filename=f"{i}.png", bounding_boxes=[BoundingBox(label="cat", x=0, y=0, width=5, height=5),
                                                                 BoundingBox(label="tree", x=1, y=1, width=5, height=5)])
        out.append(SampleInput(s, lambda d=data: d))
    return out


def run_block(model: Path, images: Sequence[Image.Image | bytes], **params: Any) -> tuple[list[Any], BlockContext]:
    # the block's own defaults (parameters.json) for everything not given
    args = OwlVit.options({"prompt": PROMPT, "model": str(model), "device": "cpu", "precision": "fp32",
                           "batch-size": 2, "delete_existing_bounding_boxes": "yes", **params})
    OwlVit.check_args(args)
    block = OwlVit()
    ctx = BlockContext()
    block.setup(args, ctx)
    try:
        return list(block.label(inputs(images), args, ctx)), ctx
    finally:
        block.teardown()


# -- the same boxes as transformers' own pipeline -----------------------------------------------

@pytest.mark.parametrize("which", ["owlvit", "owlv2"])
def test_same_boxes_and_scores_as_the_transformers_pipeline(which: str, request: pytest.FixtureRequest) -> None:
    from transformers import pipeline

    model = request.getfixturevalue(which)
    images = [rgb(64, 48, 1), rgb(50, 70, 2), rgb(96, 96, 3), rgb(33, 20, 4), rgb(80, 60, 5)]
    # batch-size 2 with 5 images: full and partial micro-batches; one box per prompt line, as the
    # pipeline (and the published block) gives them
    results, _ = run_block(model, images, **{"one-box-per-object": False})
    pipe = pipeline("zero-shot-object-detection", model=str(model))
    queries = parse_prompt(PROMPT)
    compared = 0
    for img, change in zip(images, results, strict=True):
        assert isinstance(change, SampleChange) and change.bounding_boxes is not None
        ours = change.bounding_boxes
        theirs = []
        for q in queries:  # the pipeline scores each label on its own, with one threshold per call
            for r in pipe(img, candidate_labels=[q.text], threshold=q.min_confidence):
                b = r["box"]
                x0, y0 = max(b["xmin"], 0), max(b["ymin"], 0)
                x1, y1 = min(b["xmax"], img.width), min(b["ymax"], img.height)
                if x1 - x0 >= 2 and y1 - y0 >= 2:  # boxes that stay boxes once clamped to the image
                    theirs.append((q.label, r["score"], (x0, y0, x1, y1)))
        assert theirs, "the tiny model should find something above the thresholds"
        unmatched = list(ours)
        for label, score, (x0, y0, x1, y1) in theirs:
            match = next((o for o in unmatched if o.label == label and abs((o.score or 0) - score) < 1e-3
                          and abs(o.x - x0) <= 1 and abs(o.y - y0) <= 1
                          and abs(o.x + o.width - x1) <= 1 and abs(o.y + o.height - y1) <= 1), None)
            assert match is not None, f"pipeline box {label} {score:.4f} {(x0, y0, x1, y1)} missing from ours"
            unmatched.remove(match)
            compared += 1
        # what is left are boxes the pipeline's truncation made degenerate (under 2 px once clamped)
        assert all(o.width <= 2 or o.height <= 2 for o in unmatched), unmatched
        assert all(o.x + o.width <= img.width and o.y + o.height <= img.height for o in ours)
    assert compared >= 10


def test_fast_preprocessing_equals_the_image_processor(owlvit: Path) -> None:
    from transformers import AutoProcessor

    ip = AutoProcessor.from_pretrained(owlvit).image_processor
    pre = Preprocessor(ip)
    assert pre.fast
    img = rgb(123, 77, 9)
    np.testing.assert_allclose(pre(img).numpy(), ip(images=img, return_tensors="pt")["pixel_values"][0].numpy(),
                               atol=1e-5)


def test_bf16_gives_the_same_boxes_as_fp32(owlvit: Path, owlv2: Path) -> None:
    images = [rgb(640, 480, 11), rgb(500, 700, 12), rgb(400, 400, 13)]  # boxes of tens of pixels
    for model in (owlvit, owlv2):
        fp32, _ = run_block(model, images, precision="fp32", prompt="a cat (cat, 0.5)\ndog (dog, 0.5)")
        bf16, _ = run_block(model, images, precision="bf16", prompt="a cat (cat, 0.5)\ndog (dog, 0.5)")
        checked = 0
        for a_change, b_change in zip(fp32, bf16, strict=True):
            for ref, other in ((a_change.bounding_boxes, b_change.bounding_boxes),
                               (b_change.bounding_boxes, a_change.bounding_boxes)):
                for box in ref:
                    if (box.score or 0) < 0.55:  # near the threshold a box may fall either side
                        continue
                    best = max((iou(box, o) for o in other if o.label == box.label
                                and abs((o.score or 0) - (box.score or 0)) <= 0.05), default=0.0)
                    assert best >= 0.9, f"{box} has no match (IoU {best:.2f})"
                    checked += 1
        assert checked >= 10


def iou(a: BoundingBox, b: BoundingBox) -> float:
    w = max(0, min(a.x + a.width, b.x + b.width) - max(a.x, b.x))
    h = max(0, min(a.y + a.height, b.y + b.height) - max(a.y, b.y))
    inter = w * h
    return inter / (a.width * a.height + b.width * b.height - inter)


def test_precision_auto_follows_the_hardware(monkeypatch: pytest.MonkeyPatch) -> None:
    from labelblocks import accel

    monkeypatch.setattr(accel, "cpu_has_fast_bf16", lambda: True)
    assert accel.pick_precision("auto", "cpu") == "bf16"
    monkeypatch.setattr(accel, "cpu_has_fast_bf16", lambda: False)
    assert accel.pick_precision("auto", "cpu") == "fp32"
    assert accel.pick_precision("fp16", "cpu") == "fp16"


# -- post-processing, table-driven --------------------------------------------------------------

@pytest.mark.parametrize(("prompt", "expected"), [
    ("dog", [Query("dog", "dog", 0.1)]),
    ("a photo of a dog (dog)", [Query("a photo of a dog", "dog", 0.1)]),
    ("a photo of a dog (dog, 0.3)", [Query("a photo of a dog", "dog", 0.3)]),
    ("  cat ( kitty ,0.25 ) \n\n# a comment\nred car", [Query("cat", "kitty", 0.25), Query("red car", "red car", 0.1)]),
    ("cat (0.4)", [Query("cat", "cat", 0.4)]),
    ("digit seven (7)", [Query("digit seven", "7", 0.1)]),
    ("cat (, 0.5)", [Query("cat", "cat", 0.5)]),
])
def test_prompt_grammar(prompt: str, expected: list[Query]) -> None:
    assert parse_prompt(prompt) == expected


@pytest.mark.parametrize(("prompt", "message"), [
    ("", "empty prompt"),
    ("# only a comment", "empty prompt"),
    ("cat (cat, high)", "line 1: min_confidence must be a number"),
    ("dog\ncat (cat, 1.5)", "line 2: min_confidence must be from 0 to 1"),
    ("cat (a, b, c)", "at most `(label, min_confidence)`"),
    ("(cat, 0.2)", "search text is empty"),
    ("cat (cat", "expected `search text (label, min_confidence)`"),
])
def test_bad_prompts(prompt: str, message: str) -> None:
    with pytest.raises(ValueError, match=None) as e:
        parse_prompt(prompt)
    assert message in str(e.value)


# three patches of a 100x100 image; two queries (cat 0.5, dog 0.5)
BOXES = np.array([[10, 10, 30, 30],     # 4 % of the image
                  [12, 12, 32, 32],     # overlaps the first (IoU 0.68)
                  [-20, 50, 90, 130]],  # 110x80 -> clamped to 90x50 = 45 %
                 dtype=np.float64)
SCORES = np.array([[0.9, 0.2], [0.7, 0.6], [0.55, 0.4]])
Q2 = [Query("a cat", "cat", 0.5), Query("dog", "dog", 0.5)]


@pytest.mark.parametrize(("queries", "filters", "expected"), [
    (Q2, Filters(), [("cat", 0.9, (10, 10, 20, 20)), ("cat", 0.7, (12, 12, 20, 20)), ("dog", 0.6, (12, 12, 20, 20)),
                     ("cat", 0.55, (0, 50, 90, 50))]),
    ([Query("a cat", "cat", 0.6), Q2[1]], Filters(), [("cat", 0.9, (10, 10, 20, 20)), ("cat", 0.7, (12, 12, 20, 20)),
                                                       ("dog", 0.6, (12, 12, 20, 20))]),
    (Q2, Filters(min_area_pct=5), [("cat", 0.55, (0, 50, 90, 50))]),
    (Q2, Filters(max_area_pct=40), [("cat", 0.9, (10, 10, 20, 20)), ("cat", 0.7, (12, 12, 20, 20)),
                                    ("dog", 0.6, (12, 12, 20, 20))]),
    # NMS is per label: the dog box on the same spot survives
    (Q2, Filters(nms_iou=0.5), [("cat", 0.9, (10, 10, 20, 20)), ("dog", 0.6, (12, 12, 20, 20)),
                                ("cat", 0.55, (0, 50, 90, 50))]),
    (Q2, Filters(nms_iou=0.7), [("cat", 0.9, (10, 10, 20, 20)), ("cat", 0.7, (12, 12, 20, 20)),
                                ("dog", 0.6, (12, 12, 20, 20)), ("cat", 0.55, (0, 50, 90, 50))]),
    # two prompt lines with one label share NMS
    ([Query("a cat", "pet", 0.5), Query("dog", "pet", 0.5)], Filters(nms_iou=0.5),
     [("pet", 0.9, (10, 10, 20, 20)), ("pet", 0.55, (0, 50, 90, 50))]),
])
def test_detections(queries: list[Query], filters: Filters, expected: list[tuple[str, float, tuple[int, ...]]]) -> None:
    boxes, _ = detections(SCORES, BOXES, queries, 100, 100, filters)
    assert [(b.label, b.score, (b.x, b.y, b.width, b.height)) for b in boxes] == expected


def test_near_misses_are_recorded_for_tuning() -> None:
    # dog scores 0.2, 0.6, 0.4 against 0.65: the two above half the threshold are kept, best first
    _, near = detections(SCORES, BOXES, [Q2[0], Query("dog", "dog", 0.65)], 100, 100, Filters())
    assert [(n["label"], n["score"], n["x"]) for n in near] == [("dog", 0.6, 12), ("dog", 0.4, 0)]


def test_nms_keeps_the_best_of_overlapping_boxes() -> None:
    assert nms(BOXES, np.array([0.5, 0.9, 0.1]), 0.5) == [1, 2]
    assert nms(BOXES, np.array([0.5, 0.9, 0.1]), 0.9) == [1, 0, 2]


EXISTING = [BoundingBox(label="cat", x=0, y=0, width=5, height=5), BoundingBox(label="tree", x=1, y=1, width=5, height=5)]


@pytest.mark.parametrize(("mode", "kept"), [("no", ["cat", "tree"]), ("matching-prompt", ["tree"]), ("yes", [])])
def test_delete_modes(mode: str, kept: list[str]) -> None:
    assert [b.label for b in kept_boxes(EXISTING, mode, {"cat", "dog"})] == kept


@pytest.mark.parametrize(("mode", "existing"), [("no", ["cat", "tree"]), ("matching-prompt", ["tree"]), ("yes", [])])
def test_delete_modes_in_the_block(owlvit: Path, mode: str, existing: list[str]) -> None:
    (change,), _ = run_block(owlvit, [rgb(64, 48, 1)], delete_existing_bounding_boxes=mode)
    old = [b.label for b in change.bounding_boxes if b.score is None]
    assert old == existing
    assert any(b.score is not None for b in change.bounding_boxes)
    assert change.metadata == {"labeled_by": str(owlvit), "prompt": PROMPT}


# -- images of every kind, bad images ------------------------------------------------------------

def _bytes(img: Image.Image, fmt: str = "PNG", **kw: Any) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def test_image_modes_orientation_and_corrupt_images(owlvit: Path) -> None:
    base = rgb(60, 40, 3)
    gray16 = Image.fromarray((np.random.default_rng(1).integers(0, 65535, (40, 60))).astype(np.uint16))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90°: the 60x40 stored image is shown 40x60
    images: list[Image.Image | bytes] = [
        _bytes(base.convert("L")), _bytes(base.convert("P")), _bytes(base.convert("RGBA")), _bytes(gray16),
        _bytes(base, "JPEG", exif=exif), b"not an image at all", _bytes(base)[:60]]
    results, _ = run_block(owlvit, images, prompt="thing (thing, 0.0)")
    for r in results[:5]:
        assert isinstance(r, SampleChange) and r.bounding_boxes
    rotated = results[4].bounding_boxes
    assert max(b.x + b.width for b in rotated) <= 40 and max(b.y + b.height for b in rotated) <= 60
    assert max(b.y + b.height for b in rotated) > 40  # boxes use the oriented height
    assert all(isinstance(r, SampleFailure) and "cannot read the image" in r.error for r in results[5:])


def test_a_model_that_cannot_be_found_names_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub

    from labelblocks.errors import BlockError

    # as on a machine without network that has set HF_HUB_OFFLINE=1 (read by the hub at import)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(BlockError) as e:
        run_block(Path("acme/owl-that-is-not-there"), [rgb(10, 10, 0)])
    msg = str(e.value)
    assert "'acme/owl-that-is-not-there' was not found" in msg and "-p model=/path/to/model" in msg
    with pytest.raises(BlockError, match="cannot load model from the folder"):
        run_block(tmp_path, [rgb(10, 10, 0)])
    with pytest.raises(BlockError, match=r"model '.*/not-here/owl': no such folder \(pass a folder"):
        run_block(tmp_path / "not-here" / "owl", [rgb(10, 10, 0)])


def test_queries_are_embedded_once_and_each_image_goes_through_the_model_once(owlvit: Path,
                                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    from transformers import OwlViTForObjectDetection, OwlViTModel

    calls = {"text": 0, "images": 0, "forwards": 0}
    text_features = OwlViTModel.get_text_features
    image_embedder = OwlViTForObjectDetection.image_embedder

    def count_text(self: Any, *a: Any, **kw: Any) -> Any:
        calls["text"] += 1
        return text_features(self, *a, **kw)

    def count_images(self: Any, pixel_values: Any, *a: Any, **kw: Any) -> Any:
        calls["images"] += pixel_values.shape[0]
        calls["forwards"] += 1
        return image_embedder(self, pixel_values, *a, **kw)

    monkeypatch.setattr(OwlViTModel, "get_text_features", count_text)
    monkeypatch.setattr(OwlViTForObjectDetection, "image_embedder", count_images)
    ten = "\n".join(f"object {i} (o{i}, 0.5)" for i in range(10))
    results, ctx = run_block(owlvit, [rgb(30, 30, i) for i in range(5)], prompt=ten, **{"batch-size": 2})
    assert calls == {"text": 1, "images": 5, "forwards": 3}
    assert len(results) == 5 and ctx.usage == {"images": 5}


# -- end to end through the CLI ------------------------------------------------------------------

def test_owlvit_then_relabel_through_preview_and_run(cli: Cli, tmp_path: Path, owlvit: Path) -> None:
    for i in range(5):
        make_image(tmp_path / "d" / f"street.{i}.png", size=(64, 48), seed=i)
    broken = make_image(tmp_path / "d" / "street.broken.png", size=(64, 48), seed=99)
    cli("upload", str(tmp_path / "d"))
    corrupt_stored_copy(cli.project, broken, b"\x89PNG\r\n\x1a\n broken")
    assert "owlvit" in cli("blocks", "list").stdout
    info = cli.json("blocks", "info", "owlvit")
    assert {p["param"] for p in info["parameters"]} >= {"prompt", "delete_existing_bounding_boxes", "nms",
                                                         "nms-iou-threshold", "model", "device", "precision"}
    cli("actions", "create", "boxes", "--step", "owlvit", "-p", f"model={owlvit}", "-p", "prompt=" + PROMPT,
        "-p", "precision=fp32", "-p", "nms=true", "-p", "batch-size=2",
        "--step", "relabel", "-p", "mapping=cat -> kitten", "--set-metadata", "ai-labeled=true")
    preview = cli.json("actions", "preview", "boxes", "--limit", "3")
    props = cli.json("proposals", "show", str(preview["jobId"]))["proposedChanges"]
    step1 = [p for p in props if p["step"] == 1]
    step2 = [p for p in props if p["step"] == 2]
    assert len(step1) == 3 and len(step2) == 3
    # step 2 saw step 1's boxes: the cats it renamed came from owlvit
    assert any(b["label"] == "cat" for p in step1 for b in p["proposedChanges"]["boundingBoxes"])
    assert all(b["label"] != "cat" for p in step2 for b in p["proposedChanges"]["boundingBoxes"])
    assert all("score" in b for p in step1 for b in p["proposedChanges"]["boundingBoxes"])
    assert all(s["boundingBoxes"] == [] for s in cli.json("samples", "list"))  # preview changed nothing
    out = cli.json("actions", "run", "boxes", expect=1)  # exit 1: a sample failed
    assert out["failed"] == 1 and out["applied"] == 5
    assert out["cached"] == 6 and out["computed"] == 5  # the 3 previewed samples (2 steps) are not recomputed
    samples = {s["filename"]: s for s in cli.json("samples", "list")}
    done = [s for name, s in samples.items() if "broken" not in name]
    assert all(s["metadata"]["labeled_by"] == str(owlvit) and s["metadata"]["ai-labeled"] == "true" for s in done)
    assert all(s["metadata"]["prompt"] == PROMPT for s in done)
    labels = {b["label"] for s in done for b in s["boundingBoxes"]}
    assert labels <= {"kitten", "dog", "car"} and "kitten" in labels
    assert all("score" not in b for s in done for b in s["boundingBoxes"])  # scores stay in the job record
    assert "ai-labeled" not in samples["street.broken.png"]["metadata"]
    job = cli.json("jobs", "show", str(out["jobId"]))
    assert job["counts"]["failed"] == 1


@pytest.mark.parametrize(("params", "message"), [
    (["prompt=cat (cat, 2)"], "prompt: prompt line 1: min_confidence must be from 0 to 1"),
    (["ignore-objects-smaller-than=120"], "ignore-objects-smaller-than: expected 0 to 100"),
    (["ignore-objects-smaller-than=50", "ignore-objects-larger-than=10"], "every box would be dropped"),
    (["nms=true", "nms-iou-threshold=3"], "nms-iou-threshold: expected 0 to 1"),
    (["precision=int8"], "precision"),
])
def test_owlvit_arguments_checked_when_saved(cli: Cli, params: list[str], message: str) -> None:
    args = [x for p in params for x in ("-p", p)]
    r = cli("actions", "create", "bad", "--step", "owlvit", *args, expect=1).stderr
    assert message in r
    assert cli.json("actions", "list") == []


def test_threshold_parameters_rewrite_the_prompt_line_of_the_label() -> None:
    prompt = "a cat (cat, 0.6)\n# a comment\ndog (dog)\na red car (car, 0.7)"
    got = OwlVit.threshold_parameters({"prompt": prompt}, "dog", 0.275)
    assert got == {"prompt": "a cat (cat, 0.6)\ndog (dog, 0.275)\na red car (car, 0.7)"}
    assert parse_prompt(got["prompt"])[1] == Query("dog", "dog", 0.275)
    assert OwlVit.threshold_parameters({"prompt": prompt}, "zebra", 0.3) is None


def test_evaluation_tunes_the_prompt_from_scores_and_near_misses(cli: Cli, tmp_path: Path, owlvit: Path) -> None:
    """OWL-ViT evaluated against boxes it found itself at a lower threshold (as if a person had
    kept those): the sweep reaches under the block's threshold through the near misses it
    recorded, and `actions set --suggested` writes the suggestion into the prompt line."""
    for i in range(4):
        make_image(tmp_path / "t" / f"street.{i}.png", size=(64, 48), seed=i)
    cli("upload", str(tmp_path / "t"), "--no-label")
    common = ["-p", f"model={owlvit}", "-p", "precision=fp32", "-p", "delete_existing_bounding_boxes=yes"]
    cli("actions", "create", "probe", "--step", "owlvit", "-p", "prompt=a cat (cat, 0.01)", *common)
    probe = cli.json("actions", "preview", "probe")["jobId"]
    scores = sorted(b["score"] for p in cli.json("proposals", "show", str(probe))["proposedChanges"]
                    for b in p["proposedChanges"]["boundingBoxes"])
    low, high = scores[len(scores) // 3], scores[2 * len(scores) // 3]
    cli("actions", "create", "truth", "--step", "owlvit", "-p", f"prompt=a cat (cat, {low})", *common)
    cli("actions", "run", "truth")  # the truth: the boxes over `low`
    cli("actions", "create", "tune", "--step", "owlvit", "-p", f"prompt=a cat (cat, {high})", *common)
    doc = cli.json("actions", "evaluate", "tune")
    [t] = doc["thresholds"]
    assert t["key"] == "cat" and t["nearMisses"] > 0 and t["scores"] > t["nearMisses"]
    assert t["value"] == high and t["currentFrom"] == "step"  # the prompt line's own threshold
    # the truth's boxes between `low` and `high` are near misses: keeping them is right
    assert t["suggestedValue"] < high
    assert t["command"] == f"labelblocks actions set tune --step 1 -p 'prompt=a cat (cat, {t['suggestedValue']:g})'"
    out = cli("actions", "set", "tune", "--suggested").stdout
    assert f"From the evaluation of job {doc['jobId']}" in out
    assert cli.json("actions", "show", "tune")["steps"][0]["parameters"]["prompt"] == \
        f"a cat (cat, {t['suggestedValue']:g})"


SAME_PLACE_PROMPT = "a circle (circle, 0.05)\na round thing (circle, 0.05)\na triangle (triangle, 0.05)"


def _boxes(cli: Cli) -> dict[str, list[tuple[Any, ...]]]:
    return {s["filename"]: sorted((b["label"], b["x"], b["y"], b["width"], b["height"]) for b in s["boundingBoxes"])
            for s in cli.json("samples", "list", "--include-disabled")}


def test_readme_detect_then_rename_leaves_one_runs_boxes(cli: Cli, tmp_path: Path, owlvit: Path) -> None:
    """The README's owlvit -> relabel pattern, previewed, applied, run, run --all, split and run
    again: every sample holds exactly one run's boxes, one per object."""
    for i in range(5):
        make_image(tmp_path / "d" / f"shape.{i}.png", size=(64, 48), seed=i)
    cli("upload", str(tmp_path / "d"), "--no-label")
    cli("actions", "create", "b", "--step", "owlvit", "-p", f"model={owlvit}", "-p", "prompt=" + SAME_PLACE_PROMPT,
        "-p", "delete_existing_bounding_boxes=matching-prompt", "-p", "precision=fp32", "-p", "batch-size=2",
        "--step", "relabel", "-p", "mapping=circle -> ring")
    job = cli.json("actions", "preview", "b", "--limit", "2")["jobId"]
    cli("proposals", "apply", str(job))
    assert cli.json("actions", "run", "b")["unchanged"] == 2  # previewed images are not computed again
    once = _boxes(cli)
    assert all(once.values())
    for boxes in once.values():  # one box per object: no two boxes at one place
        assert all(iou(BoundingBox(label=a[0], x=a[1], y=a[2], width=a[3], height=a[4]),
                       BoundingBox(label=b[0], x=b[1], y=b[2], width=b[3], height=b[4])) < 0.9
                   for i, a in enumerate(boxes) for b in boxes[i + 1:])
    assert {b[0] for boxes in once.values() for b in boxes} <= {"ring", "triangle"}
    cli("actions", "run", "b")
    assert _boxes(cli) == once
    cli("actions", "run", "b", "--all")
    assert _boxes(cli) == once
    cli("split", "--train", "0.5", "--validation", "0.25", "--test", "0.25", "--stratify", "none")
    cli("actions", "run", "b")
    assert _boxes(cli) == once


def test_one_box_per_prompt_line_is_described_as_apply_writes_it(cli: Cli, tmp_path: Path, owlvit: Path) -> None:
    for i in range(2):
        make_image(tmp_path / "d" / f"shape.{i}.png", size=(64, 48), seed=i)
    cli("upload", str(tmp_path / "d"), "--no-label")
    cli("actions", "create", "lines", "--step", "owlvit", "-p", f"model={owlvit}", "-p", "prompt=" + SAME_PLACE_PROMPT,
        "-p", "precision=fp32", "-p", "one-box-per-object=false")
    preview = cli.json("actions", "preview", "lines")
    added = preview["total"]["boxesAdded"]
    places = sum(len({b[1:] for b in bs}) for bs in preview_boxes(cli, preview["jobId"]).values())
    assert added > places  # several lines' boxes at the same places, each one counted
    shown = cli("proposals", "show", str(preview["jobId"])).stdout
    assert f"boxes added: {added}" in shown and "triangle" in shown and "circle" in shown
    before = sum(len(b) for b in _boxes(cli).values())
    cli("proposals", "apply", str(preview["jobId"]))
    assert sum(len(b) for b in _boxes(cli).values()) - before == added
    # by default the same prompt gives one box per object; the others are near misses in the record
    cli("actions", "create", "one", "--step", "owlvit", "-p", f"model={owlvit}", "-p", "prompt=" + SAME_PLACE_PROMPT,
        "-p", "precision=fp32")
    one = cli.json("actions", "preview", "one")
    assert one["total"]["boxesAdded"] < added
    records = [p["record"] for p in one["proposals"] if p.get("record")]
    assert any(n.get("sameObjectAs") for r in records for n in r["near_misses"])


def preview_boxes(cli: Cli, job: int) -> dict[int, list[tuple[Any, ...]]]:
    props = cli.json("proposals", "show", str(job))["proposedChanges"]
    return {p["sampleId"]: [(b["label"], b["x"], b["y"], b["width"], b["height"])
                            for b in p["proposedChanges"]["boundingBoxes"]] for p in props}
