"""Collecting what to upload: files and folders walked, the companion label files beside them
(bounding_boxes.labels, structured_labels.labels), and the protocol's info file read into items."""


from __future__ import annotations

import os
import stat
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from .constants import UPLOAD_CATEGORIES
from .errors import InvalidInput
from .model import StructuredLabel, parse_boxes, parse_json, parse_structured_labels
from .uploads import BOXES_FILE, COMPANION_FILES, INFER, STRUCTURED_FILE, Outcome, UploadItem


def walk_paths(paths: Iterable[Path], problems: list[Outcome] | None = None) -> Iterator[Path]:
    """Files named, and every file under folders named (sorted; hidden files and the
    protocol's companion files skipped). A folder that cannot be read, and a symbolic link to
    a folder (not followed: it could lead anywhere, or in a circle), are added to
    ``problems``."""
    def unreadable(e: OSError) -> None:
        if problems is not None:
            problems.append(Outcome(str(e.filename), "rejected", error=f"cannot read the folder: {e.strerror or e}"))

    for p in paths:
        if p.is_dir():
            for root, dirs, files in os.walk(p, onerror=unreadable):
                for d in sorted(dirs):
                    if not d.startswith(".") and (Path(root) / d).is_symlink() and problems is not None:
                        problems.append(Outcome(str(Path(root) / d), "rejected", error=(
                            "a symbolic link to a folder, not followed: upload its target to include it")))
                dirs[:] = sorted(d for d in dirs if not d.startswith(".") and not (Path(root) / d).is_symlink())
                for f in sorted(files):
                    if f.startswith(".") or f in COMPANION_FILES:
                        continue
                    if _special(Path(root) / f, problems):
                        continue
                    yield Path(root) / f
        elif not _special(p, problems):
            yield p


def _special(path: Path, problems: list[Outcome] | None) -> bool:
    """Whether ``path`` is there but is no regular file (a FIFO, a socket, a device: reading one
    could wait forever); such a path is refused into ``problems``."""
    try:
        mode = path.stat().st_mode
    except OSError:
        return False  # missing or unreadable: the upload says so for the file
    if stat.S_ISREG(mode):
        return False
    if problems is not None:
        problems.append(Outcome(str(path), "rejected", error="not a regular file (a FIFO, socket or device): refused"))
    return True


def _load_json(path: Path, what: str) -> Any:
    try:
        data = path.read_bytes()
    except OSError as e:
        raise InvalidInput(f"{path}: cannot read {what}: {e.strerror or e}") from None
    return parse_json(data, f"{path}: {what}")


def read_companions(directory: Path) -> tuple[dict[str, Any], dict[str, Any], list[Outcome]]:
    """The bounding_boxes.labels / structured_labels.labels of a folder, keyed by file name."""
    boxes: dict[str, Any] = {}
    structured: dict[str, Any] = {}
    problems: list[Outcome] = []
    for fname, key, kind, target in (
        (BOXES_FILE, "boundingBoxes", "bounding-box-labels", boxes),
        (STRUCTURED_FILE, "structuredLabels", "structured-labels", structured),
    ):
        path = directory / fname
        if not path.exists():
            continue
        try:
            doc = _load_json(path, fname)
            if not isinstance(doc, dict) or doc.get("version") != 1:
                raise InvalidInput(f"{path}: expected version 1, got {doc.get('version') if isinstance(doc, dict) else doc!r}")
            if doc.get("type") not in (None, kind):
                raise InvalidInput(f"{path}: expected type {kind!r}, got {doc.get('type')!r}")
            entries = doc.get(key)
            if not isinstance(entries, dict):
                raise InvalidInput(f"{path}: expected {key!r} to be an object keyed by file name")
            target.update(entries)
        except InvalidInput as e:
            problems.append(Outcome(str(path), "rejected", error=str(e)))
    return boxes, structured, problems


def items_from_paths(
    paths: Iterable[Path],
    category: str = "training",
    label: Any = INFER,
    metadata: dict[str, str] | None = None,
) -> Iterator[UploadItem | Outcome]:
    """Upload items for files and folders, with companion label files applied."""
    companions: dict[Path, tuple[dict[str, Any], dict[str, Any]]] = {}
    walk_problems: list[Outcome] = []
    for f in walk_paths(paths, walk_problems):
        yield from walk_problems
        walk_problems.clear()
        parent = f.parent
        if parent not in companions:
            boxes, structured, problems = read_companions(parent)
            companions[parent] = (boxes, structured)
            yield from problems
        boxes, structured = companions[parent]
        item = UploadItem(source=str(f), name=f.name, path=f, category=category, label=label,
                          metadata=dict(metadata or {}))
        try:
            if f.name in boxes:
                item.bounding_boxes = parse_boxes(boxes[f.name], f"{BOXES_FILE} entry {f.name!r}")
            if f.name in structured:
                item.structured_labels = parse_structured_labels(structured[f.name], f"{STRUCTURED_FILE} entry {f.name!r}")
        except InvalidInput as e:
            yield Outcome(str(f), "rejected", error=str(e))
            continue
        if not f.exists():
            yield Outcome(str(f), "rejected", error="no such file")
            continue
        yield item
    yield from walk_problems


def items_from_info_file(
    info_path: Path, extra_metadata: dict[str, str] | None = None, category_override: str | None = None
) -> list[UploadItem | Outcome]:
    """Upload items from the protocol's info.labels. A malformed file as a whole raises
    InvalidInput; a bad entry becomes a rejection of that entry alone."""
    doc = _load_json(info_path, "info file")
    if not isinstance(doc, dict):
        raise InvalidInput(f"{info_path}: expected a JSON object, got {type(doc).__name__}")
    if doc.get("version") != 1:
        raise InvalidInput(f"{info_path}: expected \"version\": 1, got {doc.get('version')!r}")
    files = doc.get("files")
    if not isinstance(files, list):
        raise InvalidInput(f"{info_path}: expected \"files\" to be a list")
    base = info_path.parent
    out: list[UploadItem | Outcome] = []
    for i, entry in enumerate(files):
        where = f"{info_path} files[{i}]"
        try:
            out.append(_info_entry(entry, base, where, extra_metadata or {}, category_override))
        except InvalidInput as e:
            src = entry.get("path") if isinstance(entry, dict) and isinstance(entry.get("path"), str) else where
            out.append(Outcome(str(src), "rejected", error=f"{where}: {e}"))
    return out


def _info_entry(
    entry: Any, base: Path, where: str, extra_metadata: dict[str, str], category_override: str | None
) -> UploadItem:
    if not isinstance(entry, dict):
        raise InvalidInput(f"expected an object, got {entry!r}")
    rel = entry.get("path")
    if not isinstance(rel, str) or not rel:
        raise InvalidInput("expected a non-empty \"path\"")
    path = (base / rel).resolve()
    if not path.is_file():
        raise InvalidInput(f"file {rel!r} not found (paths are relative to the info file's folder)")
    name = entry.get("name") or path.name
    if not isinstance(name, str):
        raise InvalidInput(f"expected \"name\" to be a string, got {name!r}")
    category = category_override or entry.get("category", "training")
    if category not in UPLOAD_CATEGORIES:
        raise InvalidInput(f"unknown category {category!r}: expected one of {', '.join(UPLOAD_CATEGORIES)}")
    label: Any = None
    structured: list[StructuredLabel] | None = None
    lab = entry.get("label", {"type": "unlabeled"})
    if not isinstance(lab, dict):
        raise InvalidInput(f"expected \"label\" to be an object with a \"type\", got {lab!r}")
    t = lab.get("type")
    if t == "unlabeled":
        label = None
    elif t == "label":
        label = lab.get("label")
        if not isinstance(label, str) or not label:
            raise InvalidInput(f"label of type 'label' needs a non-empty \"label\", got {label!r}")
    elif t == "multi-label":
        structured = parse_structured_labels(lab.get("labels"), "multi-label labels")
    else:
        raise InvalidInput(f"unknown label type {t!r}: expected unlabeled, label or multi-label")
    md = entry.get("metadata", {}) or {}
    if not isinstance(md, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in md.items()):
        raise InvalidInput(f"expected \"metadata\" to be an object of strings, got {md!r}")
    boxes = None
    if entry.get("boundingBoxes") is not None:
        boxes = parse_boxes(entry["boundingBoxes"], "boundingBoxes")
    enabled = entry.get("enabled", True)
    return UploadItem(
        source=str(path),
        name=name,
        path=path,
        category=category,
        label=label,
        metadata={**md, **extra_metadata},
        bounding_boxes=boxes,
        structured_labels=structured,
        is_disabled=enabled is False,
        where=where,
    )
