"""Exporting a project (or a filtered part of it) as files plus the protocol's info.labels,
which ``labelblocks upload --info-file`` reads back into an identical dataset."""

from __future__ import annotations

import json
import os
import secrets
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .constants import EXPORT_FORMATS
from .errors import InvalidInput
from .filters import SampleFilter
from .model import Sample
from .store import Store
from .uploads import INFO_FILE

FORMATS = EXPORT_FORMATS
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
    Returns the number of samples exported. ``dest`` must be empty or absent.

    Atomic: everything is written into a temporary folder beside ``dest``, renamed to ``dest``
    at the end; an export that fails leaves no ``dest`` (or the empty one there was)."""
    with export_folder(dest) as work:
        return _export_into(store, work, f or SampleFilter(), on_progress)


@contextmanager
def export_folder(dest: Path) -> Iterator[Path]:
    """A new folder to export into, that becomes ``dest`` (absent or empty) when the block
    ends, or is removed when it fails: an export is whole or absent."""
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise InvalidInput(f"{dest} exists and is not an empty folder: choose a new folder to export into")
    dest.parent.mkdir(parents=True, exist_ok=True)
    # a new folder (the umask's permissions, as the files in it) beside dest: same file system
    work = dest.parent / f".{dest.name[:100]}.export-{secrets.token_hex(4)}"
    work.mkdir()
    try:
        yield work
        os.replace(work, dest)  # replaces an empty folder too
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise


def _export_into(store: Store, dest: Path, f: SampleFilter, on_progress: Callable[[int], None] | None) -> int:
    entries: list[dict[str, Any]] = []
    used: set[str] = set()
    offset = 0
    while True:
        page = store.list_samples(f, limit=_PAGE, offset=offset)
        if not page:
            break
        offset += len(page)
        for s in page:
            rel = f"{s.category}/{_file_name(s)}"
            if rel in used:
                rel = f"{s.category}/{_fallback_name(s)}"
            used.add(rel)
            target = dest / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                shutil.copyfile(store.blob_path(s), target)
            except FileNotFoundError:
                raise InvalidInput(f"sample {s.id} ({s.filename}): its stored file is missing from the project "
                                   f"({store.blob_path(s)}); nothing was exported") from None
            entries.append(info_entry(s, rel))
            if on_progress:
                on_progress(1)
    doc = {"version": 1, "files": entries}
    with (dest / INFO_FILE).open("x", encoding="utf-8") as fh:  # the umask's permissions, as the files
        json.dump(doc, fh, indent=1)
    return len(entries)


_NAME_BYTES = 200  # an exported name's limit, leaving room for ".<id>" within NAME_MAX (255)


def _file_name(s: Sample) -> str:
    """The sample's file name where it is usable as one, else a name made from its id."""
    name = s.filename
    usable = (name not in ("", ".", "..") and "/" not in name and "\\" not in name and name.isprintable()
              and len(name.encode("utf-8")) <= _NAME_BYTES and name.lower().endswith(_ext_of(s)))
    return name if usable else _fallback_name(s)


def _fallback_name(s: Sample) -> str:
    stem = Path(s.filename).stem
    stem = "".join(ch for ch in stem if ch.isprintable() and ch not in "/\\").strip(". ") or "sample"
    stem = stem.encode("utf-8")[:_NAME_BYTES].decode("utf-8", "ignore")
    return f"{stem}.{s.id}{_ext_of(s)}"


def _ext_of(s: Sample) -> str:
    # the stored extension of the original file; kept so readers pick the right decoder
    suffix = Path(s.filename).suffix.lower()
    return suffix if suffix else ".bin"
