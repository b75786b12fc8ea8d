"""COCO and YOLO: what detectors train on and other labeling tools export, written and read.

Export writes the selected image samples' files as they are stored (boxes are in the image as
displayed, after its EXIF orientation, as in the project) with:

- COCO: ``annotations.json`` (``images`` with ``file_name``, ``width``, ``height``;
  ``annotations`` with ``bbox`` [x, y, width, height], ``area``, ``iscrowd``; ``categories``)
  beside ``images/``. What COCO cannot hold (the sample's single label, metadata, category,
  disabled state) is kept in each image entry's ``labelblocks`` field and read back.
- YOLO: ``images/{train,val,test}/``, ``labels/.../NAME.txt`` (``class cx cy w h``, normalised),
  ``data.yaml`` (``names`` and the split folders, from the samples' categories), and
  ``labelblocks.json`` for what YOLO cannot hold.

Upload reads both back (``upload --coco FILE``, ``upload --yolo data.yaml``); a bad entry (a
box outside its image, an unknown category, a missing image, a path leaving the dataset's
folder) is rejected alone, with the entry named.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import yaml

from .constants import UPLOAD_CATEGORIES
from .errors import InvalidInput
from .export import export_folder
from .filters import SampleFilter
from .media import probe
from .model import BoundingBox, Sample
from .store import Store
from .uploads import Outcome, UploadItem

COCO_FILE = "annotations.json"
YOLO_FILE = "data.yaml"
YOLO_EXTRA = "labelblocks.json"
SPLITS = {"training": "train", "validation": "val", "testing": "test"}
_PAGE = 1000
MAX_JSON = 512 * 1024 * 1024  # bytes of an annotation file read whole


def _images(store: Store, f: SampleFilter) -> Iterator[Sample]:
    offset = 0
    selection = f.replace(data_type="image")
    while page := store.list_samples(selection, limit=_PAGE, offset=offset):
        offset += len(page)
        yield from page


def _unique_name(s: Sample, used: set[str]) -> str:
    name = Path(s.filename).name
    if not name or name in used or not name.isprintable():
        name = f"{Path(name).stem or 'image'}.{s.id}{Path(name).suffix or '.bin'}"
    used.add(name)
    return name


def _extra(s: Sample) -> dict[str, Any]:
    out: dict[str, Any] = {"category": s.category, "metadata": dict(s.metadata)}
    if s.label:
        out["label"] = s.label
    if s.is_disabled:
        out["isDisabled"] = True
    return out


def export_coco(store: Store, dest: Path, f: SampleFilter | None = None,
                on_progress: Callable[[int], None] | None = None) -> int:
    """Write the selected images and ``annotations.json`` into the new folder ``dest``
    (atomically). Returns how many images were exported."""
    with export_folder(dest) as work:
        images: list[dict[str, Any]] = []
        annotations: list[dict[str, Any]] = []
        names: dict[str, int] = {}
        used: set[str] = set()
        (work / "images").mkdir()
        for s in _images(store, f or SampleFilter()):
            name = _unique_name(s, used)
            shutil.copyfile(store.blob_path(s), work / "images" / name)
            image_id = len(images) + 1
            images.append({"id": image_id, "file_name": f"images/{name}", "width": s.width, "height": s.height,
                           "labelblocks": _extra(s)})
            for b in s.bounding_boxes:
                cat = names.setdefault(b.label, len(names) + 1)
                annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": cat,
                                    "bbox": [b.x, b.y, b.width, b.height], "area": b.width * b.height,
                                    "iscrowd": 0, "segmentation": []})
            if on_progress:
                on_progress(1)
        doc = {"info": {"description": "exported by labelblocks"}, "images": images, "annotations": annotations,
               "categories": [{"id": i, "name": n, "supercategory": ""} for n, i in names.items()]}
        (work / COCO_FILE).write_text(json.dumps(doc), encoding="utf-8")
    return len(images)


def export_yolo(store: Store, dest: Path, f: SampleFilter | None = None,
                on_progress: Callable[[int], None] | None = None) -> int:
    """Write the selected images in YOLO's layout into the new folder ``dest`` (atomically).
    Returns how many images were exported."""
    with export_folder(dest) as work:
        samples = list(_images(store, f or SampleFilter()))
        names = sorted({b.label for s in samples for b in s.bounding_boxes})
        index = {n: i for i, n in enumerate(names)}
        extra: dict[str, Any] = {}
        used: set[str] = set()
        splits: set[str] = set()
        for s in samples:
            split = SPLITS.get(s.category, "train")
            splits.add(split)
            name = _unique_name(s, used)
            (work / "images" / split).mkdir(parents=True, exist_ok=True)
            (work / "labels" / split).mkdir(parents=True, exist_ok=True)
            shutil.copyfile(store.blob_path(s), work / "images" / split / name)
            w, h = s.width or 1, s.height or 1
            lines = [f"{index[b.label]} {(b.x + b.width / 2) / w:.6f} {(b.y + b.height / 2) / h:.6f} "
                     f"{b.width / w:.6f} {b.height / h:.6f}" for b in s.bounding_boxes]
            (work / "labels" / split / f"{Path(name).stem}.txt").write_text("".join(x + "\n" for x in lines))
            extra[f"images/{split}/{name}"] = _extra(s)
            if on_progress:
                on_progress(1)
        data: dict[str, Any] = {"path": ".", **{k: f"images/{k}" for k in ("train", "val", "test") if k in splits},
                                "names": dict(enumerate(names))}
        (work / YOLO_FILE).write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
        (work / YOLO_EXTRA).write_text(json.dumps(extra), encoding="utf-8")
    return len(samples)


# --- reading ---------------------------------------------------------------------------------------


def _read_json(path: Path, what: str) -> Any:
    try:
        if path.stat().st_size > MAX_JSON:
            raise InvalidInput(f"{path}: the {what} is over {MAX_JSON // 2**20} MiB")
        return json.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise InvalidInput(f"cannot read {path}: {e.strerror or e}") from None
    except (UnicodeDecodeError, ValueError) as e:
        raise InvalidInput(f"{path}: not a valid {what} (JSON): {e}") from None


def _inside(base: Path, rel: Any, where: str) -> Path:
    if not isinstance(rel, str) or not rel:
        raise InvalidInput(f"{where}: expected a file name")
    path = (base / rel).resolve()
    if not path.is_relative_to(base.resolve()):
        raise InvalidInput(f"{where}: {rel!r} points outside {base}")
    if not path.is_file():
        raise InvalidInput(f"{where}: image {rel!r} not found in {base}")
    return path


def _apply_extra(item: UploadItem, extra: Any, category_override: str | None) -> None:
    if not isinstance(extra, dict):
        return
    if isinstance(extra.get("metadata"), dict):
        item.metadata = {**{str(k): str(v) for k, v in extra["metadata"].items()}, **item.metadata}
    if isinstance(extra.get("label"), str) and extra["label"]:
        item.label = extra["label"]
    if extra.get("isDisabled") is True:
        item.is_disabled = True
    if category_override is None and extra.get("category") in UPLOAD_CATEGORIES:
        item.category = extra["category"]


def _box(label: str, x: float, y: float, w: float, h: float, where: str) -> BoundingBox:
    try:
        return BoundingBox(label=label, x=round(x), y=round(y), width=max(1, round(w)), height=max(1, round(h)))
    except ValueError as e:
        raise InvalidInput(f"{where}: {e}") from None


def items_from_coco(path: Path, images: Path | None = None, extra_metadata: dict[str, str] | None = None,
                    category_override: str | None = None) -> tuple[list[UploadItem | Outcome], list[str]]:
    """Upload items from a COCO annotation file (image paths relative to ``images``, default
    the file's folder), and notes for the user (crowd boxes). A bad entry is a rejection."""
    doc = _read_json(path, "COCO file")
    if not isinstance(doc, dict) or not isinstance(doc.get("images"), list):
        raise InvalidInput(f"{path}: expected a COCO object with an \"images\" list")
    base = images or path.parent
    cats: dict[Any, str] = {}
    for c in doc.get("categories") or []:
        if isinstance(c, dict) and isinstance(c.get("name"), str):
            cats[c.get("id")] = c["name"]
    by_image: dict[Any, list[dict[str, Any]]] = {}
    for a in doc.get("annotations") or []:
        if isinstance(a, dict):
            by_image.setdefault(a.get("image_id"), []).append(a)
    out: list[UploadItem | Outcome] = []
    crowd = 0
    for i, img in enumerate(doc["images"]):
        where = f"{path} images[{i}]"
        try:
            if not isinstance(img, dict):
                raise InvalidInput(f"{where}: expected an object")
            file = _inside(base, img.get("file_name"), where)
            boxes = []
            for a in by_image.get(img.get("id"), []):
                if a.get("category_id") not in cats:
                    raise InvalidInput(f"{where}: annotation {a.get('id')} has the unknown category id "
                                       f"{a.get('category_id')!r}")
                bbox = a.get("bbox")
                if not (isinstance(bbox, list) and len(bbox) == 4 and all(isinstance(v, int | float) for v in bbox)):
                    raise InvalidInput(f"{where}: annotation {a.get('id')}: expected bbox [x, y, width, height]")
                crowd += a.get("iscrowd") == 1
                x, y, w, h = bbox
                boxes.append(_box(cats[a["category_id"]], x, y, w, h, f"{where} annotation {a.get('id')}"))
            item = UploadItem(source=str(file), name=file.name, path=file, category=category_override or "training",
                              label=None, metadata=dict(extra_metadata or {}), bounding_boxes=boxes,
                              structured_labels=None, is_disabled=False, where=where)
            _apply_extra(item, img.get("labelblocks"), category_override)
            out.append(item)
        except InvalidInput as e:
            out.append(Outcome(str(img.get("file_name") if isinstance(img, dict) else where), "rejected",
                               error=str(e)))
    notes = [f"{crowd} crowd annotation{'s' if crowd != 1 else ''} (iscrowd=1) became ordinary boxes"] if crowd else []
    return out, notes


_YOLO_SPLITS = {"train": "training", "val": "validation", "test": "testing"}
_IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff"}


def items_from_yolo(data_yaml: Path, extra_metadata: dict[str, str] | None = None,
                    category_override: str | None = None) -> list[UploadItem | Outcome]:
    """Upload items from a YOLO dataset's data.yaml: each split's images with the boxes of
    ``labels/.../NAME.txt`` (class ids mapped through ``names``)."""
    try:
        data = yaml.safe_load(data_yaml.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError, UnicodeDecodeError) as e:
        raise InvalidInput(f"cannot read {data_yaml}: {e}") from None
    if not isinstance(data, dict) or "names" not in data:
        raise InvalidInput(f"{data_yaml}: expected a YOLO data.yaml with \"names\"")
    names = data["names"]
    names = dict(enumerate(names)) if isinstance(names, list) else names
    if not isinstance(names, dict):
        raise InvalidInput(f"{data_yaml}: \"names\" must be a list or a mapping of class ids to names")
    base = (data_yaml.parent / str(data.get("path") or ".")).resolve()
    extra_file = data_yaml.parent / YOLO_EXTRA
    extra = _read_json(extra_file, "labelblocks.json") if extra_file.exists() else {}
    out: list[UploadItem | Outcome] = []
    for split, category in _YOLO_SPLITS.items():
        rel = data.get(split)
        if not isinstance(rel, str):
            continue
        folder = (base / rel).resolve()
        if not folder.is_relative_to(base) or not folder.is_dir():
            out.append(Outcome(str(rel), "rejected", error=f"{data_yaml} {split}: {rel!r} is not a folder inside {base}"))
            continue
        for image in sorted(p for p in folder.rglob("*") if p.suffix.lower() in _IMAGE_SUFFIXES):
            rel_image = image.relative_to(base).as_posix()
            where = f"{data_yaml} {rel_image}"
            try:
                item = UploadItem(source=str(image), name=image.name, path=image,
                                  category=category_override or category, label=None,
                                  metadata=dict(extra_metadata or {}), bounding_boxes=None, structured_labels=None,
                                  is_disabled=False, where=where)
                item.bounding_boxes = _yolo_boxes(image, base, rel_image, names, where)
                _apply_extra(item, extra.get(rel_image) if isinstance(extra, dict) else None, category_override)
                out.append(item)
            except InvalidInput as e:
                out.append(Outcome(str(image), "rejected", error=str(e)))
    return out


def _yolo_boxes(image: Path, base: Path, rel: str, names: dict[Any, Any], where: str) -> list[BoundingBox]:
    """The boxes of ``labels/.../NAME.txt`` for ``images/.../NAME.ext`` (YOLO's convention)."""
    parts = rel.split("/")
    if "images" in parts:
        parts[len(parts) - 1 - parts[::-1].index("images")] = "labels"
    label_file = base.joinpath(*parts).with_suffix(".txt")
    if not label_file.exists():
        return []
    info = probe(image.read_bytes(), image.name)
    w, h = info.width or 0, info.height or 0
    boxes = []
    for n, line in enumerate(label_file.read_text(encoding="utf-8").splitlines(), 1):
        fields = line.split()
        if not fields:
            continue
        try:
            cls, cx, cy, bw, bh = int(fields[0]), *map(float, fields[1:5])
        except (ValueError, TypeError):
            raise InvalidInput(f"{where}: {label_file.name} line {n}: expected 'class cx cy w h'") from None
        if cls not in names:
            raise InvalidInput(f"{where}: {label_file.name} line {n}: unknown class id {cls}")
        boxes.append(_box(str(names[cls]), (cx - bw / 2) * w, (cy - bh / 2) * h, bw * w, bh * h,
                          f"{where} line {n}"))
    return boxes
