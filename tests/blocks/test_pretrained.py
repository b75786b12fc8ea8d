"""The pretrained block on tiny random-initialised ViT (classification) and YOLOS (detection)
checkpoints built here, checked against transformers' own pipelines, and with another
project's served model as its source."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.blocks.tiny_models import make_vit, make_yolos
from tests.conftest import Cli, make_image

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
