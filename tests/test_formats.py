"""COCO and YOLO: export, upload back (round trip), a COCO file from other tools, bad entries."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from faster_coco_eval import COCO
from PIL import Image

from labelblocks.formats import items_from_coco
from labelblocks.project import init_project

from .conftest import Cli, make_image


def _rotated_jpeg(path: Path) -> Path:
    """A 64x48 JPEG stored sideways: EXIF orientation 6 shows it 48 wide and 64 high."""
    path.parent.mkdir(parents=True, exist_ok=True)
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.new("RGB", (64, 48), (200, 30, 30)).save(path, exif=exif.tobytes())
    return path


@pytest.fixture
def dataset(cli: Cli, tmp_path: Path) -> Cli:
    """Images with boxes, labels, metadata, two categories, a disabled one, a rotated JPEG."""
    files = [make_image(tmp_path / "up" / f"street.{i}.png", size=(64, 48), seed=i) for i in range(3)]
    files.append(_rotated_jpeg(tmp_path / "up" / "turned.jpg"))
    cli("upload", *map(str, files), "--metadata", "site=Paris")
    by_name = {s["filename"]: s["id"] for s in cli.json("samples", "list")}
    from labelblocks.model import BoundingBox
    from labelblocks.project import open_store

    with open_store(cli.project) as store:
        store.set_bounding_boxes(by_name["street.0.png"], [BoundingBox(label="car", x=2, y=3, width=20, height=10),
                                                           BoundingBox(label="person", x=30, y=5, width=8, height=30)])
        store.set_bounding_boxes(by_name["street.1.png"], [BoundingBox(label="car", x=0, y=0, width=64, height=48)])
        store.set_bounding_boxes(by_name["turned.jpg"], [BoundingBox(label="person", x=4, y=40, width=40, height=20)])
        store.set_categories({by_name["street.2.png"]: "testing"})
    cli("metadata", "set", "--ids", str(by_name["street.1.png"]), "reviewed=yes")
    cli("samples", "disable", str(by_name["street.2.png"]))
    return cli


def _view(cli: Cli) -> list[tuple[Any, ...]]:
    return sorted((s["filename"], s.get("label"), s["category"], s["isDisabled"], json.dumps(s["metadata"], sort_keys=True),
                   s["width"], s["height"], sorted((b["label"], b["x"], b["y"], b["width"], b["height"])
                                                   for b in s["boundingBoxes"]))
                  for s in cli.json("samples", "list", "--include-disabled"))


@pytest.mark.parametrize("fmt", ["coco", "yolo"])
def test_export_then_upload_gives_the_same_dataset(dataset: Cli, tmp_path: Path, fmt: str) -> None:
    out = tmp_path / f"export-{fmt}"
    assert dataset.json("export", str(out), "--format", fmt)["exported"] == 4
    turned = next(s for s in dataset.json("samples", "list") if s["filename"] == "turned.jpg")
    assert (turned["width"], turned["height"]) == (48, 64)  # as displayed
    again = Cli(init_project(tmp_path / f"again-{fmt}"))
    source = ["--coco", str(out / "annotations.json")] if fmt == "coco" else ["--yolo", str(out / "data.yaml")]
    again("upload", *source)
    assert _view(again) == _view(dataset)


def test_coco_export_loads_in_a_coco_reader(dataset: Cli, tmp_path: Path) -> None:
    dataset("export", str(tmp_path / "c"), "--format", "coco")
    coco = COCO(str(tmp_path / "c" / "annotations.json"))
    assert sorted(c["name"] for c in coco.loadCats(coco.getCatIds())) == ["car", "person"]
    assert len(coco.getAnnIds()) == 4 and len(coco.getImgIds()) == 4
    ann = coco.loadAnns(coco.getAnnIds(catIds=coco.getCatIds(catNms=["person"])))
    assert sorted(a["bbox"] for a in ann) == [[4, 40, 40, 20], [30, 5, 8, 30]]
    assert all((tmp_path / "c" / img["file_name"]).is_file() for img in coco.loadImgs(coco.getImgIds()))


def test_yolo_layout(dataset: Cli, tmp_path: Path) -> None:
    dataset("export", str(tmp_path / "y"), "--format", "yolo")
    data = yaml.safe_load((tmp_path / "y" / "data.yaml").read_text())
    assert data["names"] == {0: "car", 1: "person"} and data["train"] == "images/train" and data["test"] == "images/test"
    assert (tmp_path / "y" / "labels" / "train" / "street.1.txt").read_text() == "0 0.500000 0.500000 1.000000 1.000000\n"
    assert (tmp_path / "y" / "images" / "test" / "street.2.png").is_file()


def test_a_coco_file_from_other_tools_loads_and_bad_entries_fail_alone(cli: Cli, tmp_path: Path) -> None:
    images = tmp_path / "val2017"
    for i in range(5):
        make_image(images / f"{i:012d}.jpg", size=(64, 48), seed=i)
    make_image(tmp_path / "outside.jpg", size=(64, 48))
    doc = {"info": {}, "licenses": [], "categories": [{"id": 3, "name": "car", "supercategory": "vehicle"},
                                                      {"id": 1, "name": "person", "supercategory": "person"}],
           "images": [{"id": 10 + i, "file_name": f"{i:012d}.jpg", "width": 64, "height": 48} for i in range(5)]
           + [{"id": 20, "file_name": "../outside.jpg", "width": 64, "height": 48},
              {"id": 21, "file_name": "missing.jpg", "width": 64, "height": 48}],
           "annotations": [
               {"id": 1, "image_id": 10, "category_id": 3, "bbox": [1.4, 2.6, 20.2, 10.0], "area": 202.0, "iscrowd": 0,
                "segmentation": [[1, 2, 3, 4]]},
               {"id": 2, "image_id": 10, "category_id": 1, "bbox": [30, 5, 8, 30], "area": 240, "iscrowd": 1,
                "segmentation": {"counts": [1], "size": [48, 64]}},
               {"id": 3, "image_id": 11, "category_id": 99, "bbox": [0, 0, 5, 5], "area": 25, "iscrowd": 0},
               {"id": 4, "image_id": 12, "category_id": 3, "bbox": [60, 40, 30, 30], "area": 900, "iscrowd": 0}]}
    (tmp_path / "instances_val2017.json").write_text(json.dumps(doc))
    r = cli("upload", "--coco", str(tmp_path / "instances_val2017.json"), "--images", str(images), "--json", expect=1)
    report = json.loads(r.stdout)
    errors = " | ".join(o["error"] for o in report["files"] if o.get("error"))
    assert "unknown category id 99" in errors and "outside the 64x48 image" in errors
    assert "points outside" in errors and "'missing.jpg' not found" in errors
    assert "1 crowd annotation (iscrowd=1) became ordinary boxes" in r.stderr
    samples = {s["filename"]: s for s in cli.json("samples", "list")}
    assert sorted(samples) == ["000000000000.jpg", "000000000003.jpg", "000000000004.jpg"]
    assert sorted((b["label"], b["x"], b["y"], b["width"], b["height"]) for b in
                  samples["000000000000.jpg"]["boundingBoxes"]) == [("car", 1, 3, 20, 10), ("person", 30, 5, 8, 30)]


def test_a_coco_file_written_by_pycocotools_loads(cli: Cli, tmp_path: Path) -> None:
    """Detections with RLE masks turned into a dataset by pycocotools' own loadRes (which
    computes each annotation's area and bbox from its mask), then uploaded."""
    import numpy as np
    from pycocotools import mask as mask_utils
    from pycocotools.coco import COCO as PyCOCO

    for i in range(2):
        make_image(tmp_path / "imgs" / f"frame{i}.jpg", size=(64, 48), seed=i)
    gt = PyCOCO()
    gt.dataset = {"images": [{"id": i + 1, "file_name": f"frame{i}.jpg", "width": 64, "height": 48} for i in range(2)],
                  "categories": [{"id": 7, "name": "bird"}], "annotations": []}
    gt.createIndex()
    mask = np.zeros((48, 64), dtype=np.uint8, order="F")
    mask[10:30, 5:25] = 1  # rows 10..29, columns 5..24
    rle = mask_utils.encode(mask)
    rle["counts"] = rle["counts"].decode("ascii")
    results = gt.loadRes([{"image_id": 1, "category_id": 7, "segmentation": rle, "score": 0.9}])
    doc = {**results.dataset, "categories": gt.dataset["categories"]}
    # numpy numbers (the area) as JSON numbers, as a pipeline writing pycocotools' output does
    (tmp_path / "from-pycocotools.json").write_text(json.dumps(doc, default=lambda v: v.tolist()))
    cli("upload", "--coco", str(tmp_path / "from-pycocotools.json"), "--images", str(tmp_path / "imgs"))
    samples = {s["filename"]: s for s in cli.json("samples", "list")}
    assert sorted(samples) == ["frame0.jpg", "frame1.jpg"]
    assert [(b["label"], b["x"], b["y"], b["width"], b["height"]) for b in samples["frame0.jpg"]["boundingBoxes"]] \
        == [("bird", 5, 10, 20, 20)]
    assert samples["frame1.jpg"]["boundingBoxes"] == []


def test_malformed_and_huge_annotation_files_are_refused(cli: Cli, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "a.json").write_text("[1, 2]")
    r = cli("upload", "--coco", str(tmp_path / "a.json"), expect=1)
    assert "expected a COCO object" in r.output
    (tmp_path / "b.json").write_text("{not json")
    assert "not a valid COCO file" in cli("upload", "--coco", str(tmp_path / "b.json"), expect=1).output
    import labelblocks.formats as formats

    monkeypatch.setattr(formats, "MAX_JSON", 10)
    (tmp_path / "c.json").write_text(json.dumps({"images": []}))
    with pytest.raises(Exception, match="over 0 MiB"):
        items_from_coco(tmp_path / "c.json")
    (tmp_path / "data.yaml").write_text("train: images/train\n")
    assert "expected a YOLO data.yaml" in cli("upload", "--yolo", str(tmp_path / "data.yaml"), expect=1).output
