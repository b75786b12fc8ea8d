"""Uploading files into a project: folders walked, labels inferred, info files and companion
label files honoured, duplicates detected, bad files rejected alone.

The same pipeline serves ``labelblocks upload`` and the HTTP ingestion service.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import multiprocessing
import os
import re
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Generator, Iterable
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from .errors import InvalidInput
from .media import MAX_IMAGE_PIXELS, MediaInfo, probe
from .model import BoundingBox, StructuredLabel
from .store import NewSample, Store, blob_store
from .store.blobs import BlobStore, RemoteBlobStore

INFO_FILE = "info.labels"
BOXES_FILE = "bounding_boxes.labels"
STRUCTURED_FILE = "structured_labels.labels"
COMPANION_FILES = {INFO_FILE, BOXES_FILE, STRUCTURED_FILE}

_LABEL_FROM_NAME = re.compile(r"^[A-Za-z0-9 _-]+")

INFER: Any = object()  # the label is inferred from the file name
SAME_CONTENT = "a sample with the same content already exists"

# a stored file name's limit: what every common file system holds in one name (export writes
# samples under their names)
MAX_NAME_BYTES = 255


def check_name(name: str) -> str:
    """A sample's file name as stored: ``name`` without folders, with undecodable bytes (a file
    system name that is not UTF-8) replaced. InvalidInput when longer than MAX_NAME_BYTES."""
    base = Path(name).name
    text = base.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    size = len(text.encode("utf-8"))
    if size > MAX_NAME_BYTES:
        raise InvalidInput(f"file name too long: {size} bytes of UTF-8 ({text[:40]}...), "
                           f"the limit is {MAX_NAME_BYTES}; rename the file")
    return text


def label_from_filename(name: str) -> str | None:
    """The protocol's rule: the file name's leading run of ``[A-Za-z0-9 _-]``."""
    m = _LABEL_FROM_NAME.match(Path(name).name)
    return m.group(0).strip() or None if m else None


def split_category(content_hash: str, train_share: int = 80) -> str:
    """Deterministic 80/20 training/testing assignment from the content hash."""
    return "training" if int(content_hash[:8], 16) % 100 < train_share else "testing"


@dataclass
class UploadItem:
    """One file to upload. ``data`` holds the bytes when they do not come from ``path``."""

    source: str
    name: str
    category: str = "training"
    label: Any = INFER
    metadata: dict[str, str] = field(default_factory=dict)
    bounding_boxes: list[BoundingBox] | None = None
    structured_labels: list[StructuredLabel] | None = None
    is_disabled: bool = False
    path: Path | None = None
    data: bytes | None = None
    where: str | None = None  # where the item was described (an info file entry), for messages
    hash_key: str | None = None  # a metadata key that receives the file's content hash (a synced file's version)
    source_stamp: tuple[str, str] | None = None  # a synced file's (URL, stamp), recorded with the sample

    def read(self) -> bytes:
        if self.data is not None:
            return self.data
        assert self.path is not None
        return self.path.read_bytes()


@dataclass
class Outcome:
    source: str
    status: Literal["added", "duplicate", "rejected"]
    id: int | None = None
    filename: str | None = None
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {"path": self.source, "status": self.status, "success": self.status != "rejected"}
        if self.id is not None:
            d["id"] = self.id
        if self.filename is not None:
            d["filename"] = self.filename
        if self.error is not None:
            d["error"] = self.error
        return d


@dataclass
class UploadReport:
    outcomes: list[Outcome] = field(default_factory=list)

    def _of(self, status: str) -> list[Outcome]:
        return [o for o in self.outcomes if o.status == status]

    @property
    def added(self) -> list[Outcome]:
        return self._of("added")

    @property
    def duplicates(self) -> list[Outcome]:
        return self._of("duplicate")

    @property
    def rejected(self) -> list[Outcome]:
        return self._of("rejected")

    def to_json(self) -> dict[str, Any]:
        return {
            "success": not self.rejected,
            "added": len(self.added),
            "duplicates": len(self.duplicates),
            "rejected": len(self.rejected),
            "files": [o.to_json() for o in self.outcomes],
        }


@dataclass
class _Prepared:
    content_hash: str = ""
    info: MediaInfo | None = None
    error: str | None = None


_BLOB_STORES: dict[str, BlobStore | RemoteBlobStore] = {}


def _prepare(data_root: str, item: UploadItem, max_pixels: int = MAX_IMAGE_PIXELS) -> _Prepared:
    """Read, validate, hash and store one file's blob. Runs in a worker (thread or process)."""
    blobs = _BLOB_STORES.get(data_root)
    if blobs is None:
        blobs = _BLOB_STORES.setdefault(data_root, blob_store(Path(data_root)))
    try:
        check_name(item.name)
        data = item.read()
        info = probe(data, item.name, max_pixels)
        _check_labels_fit(item, info)
    except InvalidInput as e:
        return _Prepared(error=f"{item.where}: {e}" if item.where else str(e))
    except OSError as e:
        return _Prepared(error=f"cannot read file: {e.strerror or e}")
    h = hashlib.sha256(data).hexdigest()
    blobs.put(h, data)
    return _Prepared(content_hash=h, info=info)


def prepare(store: Store, item: UploadItem, max_pixels: int = MAX_IMAGE_PIXELS) -> tuple[str, MediaInfo]:
    """Read, validate, hash and store one file's blob (made durable) for a sample about to
    reference it: its content hash and media. Raises InvalidInput with the reason."""
    p = _prepare(str(store.root), item, max_pixels)
    if p.error is not None or p.info is None:
        raise InvalidInput(p.error or "cannot read the file")
    store.blobs.sync([p.content_hash])
    return p.content_hash, p.info


def _prepare_chunk(args: tuple[str, list[UploadItem], int]) -> list[_Prepared]:
    data_root, items, max_pixels = args
    return [_prepare(data_root, it, max_pixels) for it in items]


def _check_labels_fit(item: UploadItem, info: MediaInfo) -> None:
    if item.bounding_boxes:
        if info.width is None or info.height is None:
            raise InvalidInput("bounding boxes given for a file that is not an image")
        for b in item.bounding_boxes:
            if not b.inside(info.width, info.height):
                raise InvalidInput(
                    f"box {b.label!r} at x={b.x} y={b.y} width={b.width} height={b.height} "
                    f"is outside the {info.width}x{info.height} image"
                )
    if item.structured_labels:
        if info.values_count is None:
            raise InvalidInput("structured labels given for a file that is not audio")
        for s in item.structured_labels:
            if s.end_index >= info.values_count:
                raise InvalidInput(
                    f"structured label {s.label!r} ends at index {s.end_index}, past the "
                    f"sample's last index {info.values_count - 1}"
                )


_CHUNK = 64


_AHEAD = 4  # chunks in flight per worker: the stream reads this far ahead of the inserts


def _prepared_stream(store: Store, items: Iterable[UploadItem | Outcome], workers: int, max_pixels: int,
                     written: set[str]) -> Generator[tuple[UploadItem | Outcome, _Prepared | None], None, None]:
    """Each item with its prepared result, in order, read from ``items`` lazily (a few chunks
    ahead). Files on disk are prepared in worker processes (decoding is CPU-bound); in-memory
    uploads in threads. Every blob written for an item handed out is added to ``written``, and
    those of chunks still in flight once the stream ends, however it ends (the caller removes
    those no sample references when the upload fails)."""
    root = str(store.root)  # workers open the project's blob store from its data folder
    stream = iter(items)
    head = list(itertools.islice(stream, 4 * _CHUNK))
    files = [it for it in head if isinstance(it, UploadItem)]
    use_processes = workers > 1 and len(files) >= 4 * _CHUNK and all(it.data is None for it in files)
    entries = itertools.chain(head, stream)
    pool: Executor
    if use_processes:
        pool = ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context(_start_method()),
                                   initializer=_worker_init, initargs=(os.getpid(),))
    else:
        pool = ThreadPoolExecutor(max_workers=workers)
    in_flight: deque[tuple[list[UploadItem | Outcome], Future[list[_Prepared]]]] = deque()

    def submit() -> bool:
        segment = list(itertools.islice(entries, _CHUNK))
        if not segment:
            return False
        chunk = [it for it in segment if isinstance(it, UploadItem)]
        in_flight.append((segment, pool.submit(_prepare_chunk, (root, chunk, max_pixels))))
        return True

    with pool:
        try:
            more = True
            while more and len(in_flight) < _AHEAD * workers:
                more = submit()
            while in_flight:
                segment, fut = in_flight.popleft()
                if more:
                    more = submit()
                prepared = fut.result()
                written.update(p.content_hash for p in prepared if p.content_hash)
                results = iter(prepared)
                for it in segment:
                    yield (it, None) if isinstance(it, Outcome) else (it, next(results))
        finally:
            for _, fut in in_flight:
                fut.cancel()  # not started: nothing written
            for _, fut in in_flight:
                if not fut.cancelled() and fut.exception() is None:
                    written.update(p.content_hash for p in fut.result() if p.content_hash)


def _worker_init(parent: int) -> None:
    """In a worker process: finish the chunk at hand on Ctrl-C (the uploading process decides,
    and removes what is not committed), and exit once the uploading process is gone."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _exit_with_parent(parent)


def _exit_with_parent(parent: int) -> None:
    """In a worker process: exit as soon as the uploading process is gone. Killed with
    SIGKILL, it cannot stop its workers, which would otherwise wait for work forever."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(0)

    threading.Thread(target=watch, name="labelblocks-parent-watch", daemon=True).start()


def _start_method() -> str:
    # fork is cheap and the workers touch no database connection; elsewhere, spawn
    return "fork" if "fork" in multiprocessing.get_all_start_methods() and sys.platform == "linux" else "spawn"


def upload(
    store: Store,
    items: Iterable[UploadItem | Outcome],
    disallow_duplicates: bool = False,
    skip_same_files: bool = False,
    batch_size: int = 500,
    on_progress: Callable[[Outcome], None] | None = None,
    workers: int | None = None,
    max_pixels: int = MAX_IMAGE_PIXELS,
) -> UploadReport:
    """Upload ``items`` (an Outcome in the stream is a rejection found while collecting).

    Files are decoded, hashed and written as blobs by workers while this thread inserts
    finished samples in batches, one transaction per batch: a sample is whole or absent. On
    an interruption, the blobs of the uncommitted batch are removed again.

    ``disallow_duplicates``: a file whose content is in the project already is skipped.
    ``skip_same_files``: one whose content and file name are (an upload repeated) is skipped.
    """
    report = UploadReport()
    seen: set[str] = set()
    pending: list[tuple[UploadItem, NewSample]] = []

    def emit(o: Outcome) -> None:
        report.outcomes.append(o)
        if on_progress:
            on_progress(o)

    def flush() -> None:
        if not pending:
            return
        if disallow_duplicates or skip_same_files:
            for o in _drop_existing(store, pending, disallow_duplicates):
                emit(o)
        store.blobs.sync(n.content_hash for _, n in pending)  # durable before a row references them
        ids = store.add_samples([n for _, n in pending])
        for (it, n), i in zip(pending, ids, strict=True):
            emit(Outcome(it.source, "added", id=i, filename=n.filename))
        pending.clear()

    workers = workers or max(1, os.cpu_count() or 1)
    written: set[str] = set()
    try:
        # closed before the cleanup below runs, so that `written` is complete there
        with contextlib.closing(_prepared_stream(store, items, workers, max_pixels, written)) as stream:
            for it, p in stream:
                if isinstance(it, Outcome):
                    emit(it)
                    continue
                assert p is not None
                if p.error is not None or p.info is None:
                    emit(Outcome(it.source, "rejected", error=p.error))
                    continue
                if disallow_duplicates and p.content_hash in seen:
                    emit(Outcome(it.source, "duplicate", error=SAME_CONTENT))
                    continue
                seen.add(p.content_hash)
                pending.append((it, _new_sample(it, p)))
                if len(pending) >= batch_size:
                    flush()
            flush()
    except BaseException:
        # the blobs of the uncommitted batch, and those workers wrote ahead: none stays unreferenced
        hashes = written | {n.content_hash for _, n in pending}
        if hashes:
            for h in hashes - store.existing_hashes(hashes):
                store.blobs.remove(h)
        raise
    return report


def _drop_existing(store: Store, pending: list[tuple[UploadItem, NewSample]], same_content: bool) -> list[Outcome]:
    """Take out of ``pending`` what the project holds already: the same content (``same_content``)
    or the same file again (content and name; the outcome names the sample it is)."""
    key: Callable[[NewSample], Any]
    known: dict[Any, int] = {}
    if same_content:
        key, why = (lambda n: n.content_hash), SAME_CONTENT
        there: set[Any] = store.existing_hashes({n.content_hash for _, n in pending})
    else:
        key, why = (lambda n: (n.content_hash, n.filename)), "already in the project (the same content and name)"
        known = store.existing_files({(n.content_hash, n.filename) for _, n in pending})
        there = set(known)
    if not there:
        return []
    out = [Outcome(it.source, "duplicate", id=known.get(key(n)), error=why) for it, n in pending if key(n) in there]
    pending[:] = [(it, n) for it, n in pending if key(n) not in there]
    return out


def _new_sample(item: UploadItem, p: _Prepared) -> NewSample:
    info = p.info
    assert info is not None
    category = split_category(p.content_hash) if item.category == "split" else item.category
    label = label_from_filename(item.name) if item.label is INFER else item.label
    if item.structured_labels and item.label is INFER:
        label = None
    return NewSample(
        filename=check_name(item.name),
        category=category,
        content_hash=p.content_hash,
        media_type=info.media_type,
        ext=info.ext,
        label=label,
        bounding_boxes=list(item.bounding_boxes or []),
        structured_labels=list(item.structured_labels or []),
        metadata={**item.metadata, **({item.hash_key: p.content_hash} if item.hash_key else {})},
        is_disabled=item.is_disabled,
        source_stamp=item.source_stamp,
        **info.media(),
    )
