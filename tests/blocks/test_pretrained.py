"""The pretrained block on tiny random-initialised ViT (classification) and YOLOS (detection)
checkpoints built here, checked against transformers' own pipelines, and with another
project's served model as its source."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.blocks.tiny_models import make_vit, make_yolos
from tests.conftest import Cli, make_image, project_sql

pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def vit(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_vit(tmp_path_factory.mktemp("vit"))


@pytest.fixture(scope="module")
def yolos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_yolos(tmp_path_factory.mktemp("yolos"))


def images(cli: Cli, tmp_path: Path, n: int = 4) -> list[Path]:
    paths = [make_image(tmp_path / "im" / f"frame.{i}.png", size=(80, 60), seed=i) for i in range(n)]
    cli("upload", str(tmp_path / "im"), "--no-label")
    return paths


def test_classification_equals_the_pipeline(cli: Cli, tmp_path: Path, vit: Path) -> None:
    from PIL import Image
    from transformers import pipeline

    paths = images(cli, tmp_path)
    cli("actions", "create", "cls", "--step", "pretrained", "-p", f"model={vit}", "-p", "min-confidence=0",
        "-p", "precision=fp32", "-p", "batch-size=3")
    job = cli.json("actions", "preview", "cls")["jobId"]
    props = {p["sampleId"]: p["proposedChanges"] for p in cli.json("proposals", "show", str(job))["proposedChanges"]}
    names = {s["id"]: s["filename"] for s in cli.json("samples", "list")}
    pipe = pipeline("image-classification", model=str(vit))
    for sid, ch in props.items():
        path = next(p for p in paths if p.name == names[sid])
        best = pipe(Image.open(path).convert("RGB"), top_k=1)[0]
        assert ch["label"] == best["label"] and ch["metadata"]["labeled_by"] == str(vit)
    # under the minimum confidence: no label proposed
    cli("actions", "create", "strict", "--step", "pretrained", "-p", f"model={vit}", "-p", "min-confidence=0.99")
    job = cli.json("actions", "preview", "strict")["jobId"]
    assert all("label" not in p["proposedChanges"] for p in cli.json("proposals", "show", str(job))["proposedChanges"])


def test_detection_equals_the_pipeline_and_keeps_classes(cli: Cli, tmp_path: Path, yolos: Path) -> None:
    import json

    from PIL import Image
    from transformers import pipeline

    paths = images(cli, tmp_path)
    cli("samples", "label", "1", "--boxes", json.dumps([{"label": "old", "x": 1, "y": 1, "width": 5, "height": 5}]))
    common = ["-p", f"model={yolos}", "-p", "min-confidence=0.2", "-p", "precision=fp32"]
    cli("actions", "create", "det", "--step", "pretrained", *common)
    job = cli.json("actions", "preview", "det")["jobId"]
    props = {p["sampleId"]: p["proposedChanges"] for p in cli.json("proposals", "show", str(job))["proposedChanges"]}
    names = {s["id"]: s["filename"] for s in cli.json("samples", "list")}
    pipe = pipeline("object-detection", model=str(yolos), threshold=0.2)
    total = 0
    for sid, ch in props.items():
        boxes = ch["boundingBoxes"]
        assert all(b["label"] != "old" for b in boxes)  # delete-existing-bounding-boxes by default
        assert all(b["x"] >= 0 and b["x"] + b["width"] <= 80 and b["y"] + b["height"] <= 60 for b in boxes)
        theirs = pipe(Image.open(next(p for p in paths if p.name == names[sid])).convert("RGB"))
        assert sorted((b["label"], round(b["score"], 3)) for b in boxes) == \
            sorted((t["label"], round(t["score"], 3)) for t in theirs
                   if t["box"]["xmax"] > t["box"]["xmin"] and t["box"]["ymax"] > t["box"]["ymin"])
        total += len(boxes)
    assert total > 0
    # keep and rename some classes; keep the image's own boxes
    cli("actions", "create", "kept", "--step", "pretrained", *common, "-p", "keep-bounding-boxes=person (human)",
        "-p", "delete-existing-bounding-boxes=false")
    job = cli.json("actions", "preview", "kept")["jobId"]
    kept = {p["sampleId"]: p["proposedChanges"]["boundingBoxes"]
            for p in cli.json("proposals", "show", str(job))["proposedChanges"]}
    assert {b["label"] for bs in kept.values() for b in bs} <= {"human", "old"}
    assert "old" in {b["label"] for b in kept[1]}
    assert sum(b["label"] == "human" for bs in kept.values() for b in bs) == \
        sum(b["label"] == "person" for ch in props.values() for b in ch["boundingBoxes"])
    # a typo in keep-bounding-boxes is refused before any image is read, with the closest name
    cli("actions", "create", "typo", "--step", "pretrained", *common, "-p", "keep-bounding-boxes=bottel")
    r = cli("actions", "preview", "typo", expect=1)
    assert "no class 'bottel'" in r.output and "'bottle'" in r.output


def test_a_served_model_of_another_project_as_the_source(cli: Cli, tmp_path: Path) -> None:
    from labelblocks.project import init_project
    from labelblocks.server import BackgroundServer

    from ..conftest import Cli as OtherCli

    other = OtherCli(init_project(tmp_path / "other"))
    other("actions", "create", "boxes", "--step", "fake-boxer", "-p", "label=thing")
    other("actions", "publish", "boxes")
    key = other.json("keys", "create")["key"]
    images(cli, tmp_path, 3)
    with BackgroundServer(other.project) as srv:
        base = srv.url.removesuffix("/v1")
        cli("actions", "create", "remote", "--step", "pretrained", "-p", f"source-url={base}",
            "-p", "source-model=boxes/1", "-p", "min-confidence=0.5")
        r = cli("actions", "preview", "remote", expect=None, env={"SOURCE_API_KEY": "ei_wrong"})
        assert r.exit_code == 1 and "refused" in r.output
        job = cli.json("actions", "preview", "remote", env={"SOURCE_API_KEY": key})["jobId"]
    props = cli.json("proposals", "show", str(job))["proposedChanges"]
    assert len(props) == 3
    for p in props:  # fake-boxer's box: the top-left quarter of the 80x60 image, score 0.75
        assert p["proposedChanges"]["boundingBoxes"] == [{"label": "thing", "x": 0, "y": 0, "width": 40,
                                                          "height": 30, "score": 0.75}]
        assert p["proposedChanges"]["metadata"]["labeled_by"] == f"{base}/boxes/1"


def _export(model: Any, path: Path, example: Any, outputs: list[str]) -> None:
    """``model(pixel_values)`` exported to ONNX with a dynamic batch."""
    import torch

    with torch.no_grad():
        torch.onnx.export(model, (example,), str(path), input_names=["pixel_values"], output_names=outputs,
                          dynamic_axes={"pixel_values": {0: "batch"}, **{o: {0: "batch"} for o in outputs}},
                          dynamo=False)


def test_an_onnx_export_of_the_classifier_gives_the_same_labels(cli: Cli, tmp_path: Path, vit: Path) -> None:
    import torch
    from transformers import AutoModelForImageClassification

    model = AutoModelForImageClassification.from_pretrained(vit).eval()

    class Logits(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, pixel_values: Any) -> Any:
            return self.model(pixel_values=pixel_values).logits

    onnx = tmp_path / "classifier.onnx"
    _export(Logits(), onnx, torch.zeros(1, 3, 32, 32), ["logits"])
    (tmp_path / "classifier.json").write_text(json.dumps({  # what the ViT's image processor does
        "task": "classification", "classes": [model.config.id2label[i] for i in range(4)],
        "input": {"width": 32, "height": 32, "mean": [0.5] * 3, "std": [0.5] * 3},
        "output": {"scores": "logits", "softmax": True}}))
    images(cli, tmp_path, 6)
    common = ["-p", "min-confidence=0", "-p", "precision=fp32", "-p", "batch-size=4"]
    cli("actions", "create", "torch", "--step", "pretrained", "-p", f"model={vit}", *common)
    cli("actions", "create", "onnx", "--step", "pretrained", "-p", f"model={onnx}", *common)
    got, jobs = {}, {}
    for name in ("torch", "onnx"):
        jobs[name] = job = cli.json("actions", "preview", name, "--limit", "6")["jobId"]
        got[name] = {p["sampleId"]: p["proposedChanges"]["label"]
                     for p in cli.json("proposals", "show", str(job))["proposedChanges"]}
    assert got["onnx"] == got["torch"] and len(got["onnx"]) == 6
    scores = {name: {sid: json.loads(rec)["scores"] for sid, rec in project_sql(cli.project).execute(
        f"SELECT sample_id, record FROM proposals WHERE job_id = {jobs[name]}")} for name in jobs}
    for sid, [[label, score]] in scores["torch"].items():  # the same probabilities, not only the same argmax
        assert scores["onnx"][sid][0][0] == label and abs(scores["onnx"][sid][0][1] - score) < 1e-3
    # a sidecar that names an output the model lacks, or none at all, is a clear error before any image
    (tmp_path / "classifier.json").write_text(json.dumps({
        "task": "classification", "classes": ["a"], "input": {"width": 32, "height": 32},
        "output": {"scores": "probabilities"}}))
    r = cli("actions", "preview", "onnx", expect=1)
    assert "sidecar names probabilities, which the model lacks" in r.output
    (tmp_path / "classifier.json").unlink()
    assert "its sidecar classifier.json is missing" in cli("actions", "preview", "onnx", expect=1).output


def test_an_onnx_export_of_the_detector_gives_the_pipelines_boxes(cli: Cli, tmp_path: Path, yolos: Path) -> None:
    import torch
    from PIL import Image
    from transformers import AutoModelForObjectDetection, pipeline

    model = AutoModelForObjectDetection.from_pretrained(yolos).eval()
    size = model.config.image_size

    class Boxes(torch.nn.Module):  # YOLOS' own post-processing, before the threshold
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, pixel_values: Any) -> Any:
            out = self.model(pixel_values=pixel_values)
            scores, labels = out.logits.softmax(-1)[..., :-1].max(-1)
            return out.pred_boxes, scores, labels

    onnx = tmp_path / "detector.onnx"
    _export(Boxes(), onnx, torch.zeros(1, 3, size[0], size[1]), ["boxes", "scores", "labels"])
    (tmp_path / "detector.json").write_text(json.dumps({
        "task": "detection", "classes": [model.config.id2label[i] for i in range(len(model.config.id2label))],
        "input": {"width": size[1], "height": size[0], "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]},
        "output": {"boxes": "boxes", "scores": "scores", "classes": "labels", "box_format": "cxcywh"}}))
    paths = images(cli, tmp_path)
    cli("actions", "create", "det", "--step", "pretrained", "-p", f"model={onnx}", "-p", "min-confidence=0.2")
    job = cli.json("actions", "preview", "det")["jobId"]
    props = {p["sampleId"]: p["proposedChanges"]["boundingBoxes"]
             for p in cli.json("proposals", "show", str(job))["proposedChanges"]}
    names = {s["id"]: s["filename"] for s in cli.json("samples", "list")}
    processor_size = {"height": size[0], "width": size[1]}
    pipe = pipeline("object-detection", model=str(yolos), threshold=0.2, image_processor_kwargs={"size": processor_size})
    for sid, boxes in props.items():
        theirs = pipe(Image.open(next(p for p in paths if p.name == names[sid])).convert("RGB"))
        assert sorted((b["label"], round(b["score"], 2)) for b in boxes) == \
            sorted((t["label"], round(t["score"], 2)) for t in theirs
                   if t["box"]["xmax"] > t["box"]["xmin"] and t["box"]["ymax"] > t["box"]["ymin"])
        assert all(b["x"] >= 0 and b["x"] + b["width"] <= 80 and b["y"] + b["height"] <= 60 for b in boxes)


def test_a_chain_of_the_detector_then_gpt4o_relabel(cli: Cli, tmp_path: Path, yolos: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """The detector proposes boxes; GPT-4o (a local server behaving like the API, naming a crop
    by its shape) re-labels those of one class, each crop judged alone; applied, the dataset
    holds the renamed boxes."""
    from tests.blocks.openai_emulator import KEY, Emulator

    images(cli, tmp_path)
    monkeypatch.setenv("OPENAI_API_KEY", KEY)

    def answer(req: dict[str, Any], image: Any) -> str:
        return json.dumps({"label": "tall thing" if image.height > image.width else "wide thing", "reason": "shape"})

    with Emulator(answer=answer) as emu:
        cli("actions", "create", "chain", "--step", "pretrained", "-p", f"model={yolos}", "-p", "min-confidence=0.05",
            "-p", "precision=fp32", "--step", "gpt4o-bbox-relabel",
            "-p", f"base-url={emu.base_url}", "-p", "which-labels=car")
        out = cli.json("actions", "run", "chain")
        assert out["failed"] == 0 and out["applied"] == 4
        samples = cli.json("samples", "list")
        boxes = [b for s in samples for b in s["boundingBoxes"]]
        renamed = [b for b in boxes if b["label"] in ("tall thing", "wide thing")]
        assert renamed and {b["label"] for b in boxes} <= {"tall thing", "wide thing", "bottle", "person"}
        # one request per car box (the tiny detector's likeliest class), none for the others; the
        # same crop of the same image is asked once (the block's answer cache)
        crops = {(s["id"], b["x"], b["y"], b["width"], b["height"]) for s in samples for b in s["boundingBoxes"]
                 if b["label"] in ("tall thing", "wide thing")}
        assert emu.ok == len(crops)
        for b in renamed:
            assert b["label"] == ("tall thing" if b["height"] > b["width"] else "wide thing")
