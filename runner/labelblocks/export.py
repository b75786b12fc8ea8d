"""Exporting a project (or a filtered part of it) as files plus the protocol's info.labels,
which ``labelblocks upload --info-file`` reads back into an identical dataset."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .errors import InvalidInput
from .filters import SampleFilter
from .model import Sample
from .store import Store
from .uploads import INFO_FILE

FORMATS = ("info",)
_PAGE = 1000


def info_entry(sample: Sample, rel_path: str) -> dict[str, Any]:
    entry: dict[str, Any] = {"path": rel_path, "name": sample.filename, "category": sample.category}
    if sample.structured_labels:
        entry["label"] = {
            "type": "multi-label",
            "labels": [s.to_json() for s in sample.structured_labels],
        }
    elif sample.label:
        entry["label"] = {"type": "label", "label": sample.label}
    else:
        entry["label"] = {"type": "unlabeled"}
    entry["metadata"] = dict(sample.metadata)
    if sample.bounding_boxes:
        entry["boundingBoxes"] = [b.to_json() for b in sample.bounding_boxes]
    if sample.is_disabled:
        entry["enabled"] = False
    return entry


def export_info(
    store: Store,
    dest: Path,
    f: SampleFilter | None = None,
    on_progress: Callable[[int], None] | None = None,
) -> int:
    """Write the selected samples' files under ``dest/<category>/`` and ``dest/info.labels``.
    Returns the number of samples exported. ``dest`` must be empty or absent."""
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise InvalidInput(f"{dest} exists and is not an empty folder: choose a new folder to export into")
    dest.mkdir(parents=True, exist_ok=True)
    f = f or SampleFilter()
    entries: list[dict[str, Any]] = []
    used: set[str] = set()
    offset = 0
    while True:
        page = store.list_samples(f, limit=_PAGE, offset=offset)
        if not page:
            break
        offset += len(page)
        for s in page:
            rel = f"{s.category}/{s.filename}"
            if rel in used or not s.filename.lower().endswith(_ext_of(s)):
                stem = Path(s.filename).stem or "sample"
                rel = f"{s.category}/{stem}.{s.id}{_ext_of(s)}"
            used.add(rel)
            target = dest / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(store.blob_path(s), target)
            entries.append(info_entry(s, rel))
            if on_progress:
                on_progress(1)
    doc = {"version": 1, "files": entries}
    fd, tmp = tempfile.mkstemp(dir=dest, prefix=".info-")
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        json.dump(doc, fh, indent=1)
    os.replace(tmp, dest / INFO_FILE)
    return len(entries)


def _ext_of(s: Sample) -> str:
    # the stored extension of the original file; kept so readers pick the right decoder
    suffix = Path(s.filename).suffix.lower()
    return suffix if suffix else ".bin"
