"""``labelblocks sync``: keep a project in step with a folder or bucket through metadata.

Every synced sample carries its source object's URL (metadata ``source``, or ``--key``) and
version (``source_etag``: the object store's ETag, or the file's content hash). A sync adds
the objects the project lacks, replaces the media of samples whose object changed (id,
labels, metadata and history stay; the revision changes), and deletes, disables or keeps the
samples whose object is gone, only among samples synced from this source.

It reads the project's synced samples once, then walks the source a page at a time, so
memory holds the project's side and one page. Every write is its own transaction (added
samples in batches, whole or absent; each replacement; removals in chunks): a sync killed
part way leaves whole samples, and running it again finishes the work without redoing any.
A second sync of an unchanged source changes nothing; it hashes only files whose size or
modification time changed.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from .errors import InvalidInput
from .model import check_text
from .sources import PAGE, FolderSource, Source, SourceObject, open_source
from .store import Store
from .store.sources import Synced, replace_media, set_stamps, synced
from .uploads import INFER, UploadItem, prepare, upload

OnDelete = Literal["delete", "disable", "keep"]
OnChange = Literal["replace", "keep"]
LabelFrom = Literal["folder", "filename", "none"]
ADD_BATCH = 2000  # new objects uploaded together (the upload's worker pool serves a batch)
SHOWN_FAILURES = 1000  # failures kept with their reasons in the report


@dataclass
class SyncOptions:
    key: str = "source"
    on_delete: OnDelete = "delete"
    on_change: OnChange = "replace"
    metadata: dict[str, str] = field(default_factory=dict)
    label_from: LabelFrom = "filename"
    category: str = "training"
    dry_run: bool = False

    @property
    def etag_key(self) -> str:
        return f"{self.key}_etag"

    def check(self) -> None:
        check_text(self.key, "--key")
        if not self.key.strip() or len(self.key) > 100:
            raise InvalidInput(f"--key {self.key!r}: expected 1 to 100 characters")
        clash = {self.key, self.etag_key} & set(self.metadata)
        if clash:
            raise InvalidInput(f"--metadata {sorted(clash)[0]}: sync sets that key itself")


@dataclass
class SyncReport:
    """What a sync did (or, in a dry run, would do)."""

    source: str
    dry_run: bool
    added: int = 0
    replaced: int = 0
    removed: int = 0  # deleted or disabled, by --on-delete
    unchanged: int = 0
    kept_changed: int = 0  # changed at the source, left as they were (--on-change keep)
    kept_gone: int = 0  # gone from the source, left in the project (--on-delete keep, or already disabled)
    ignored: int = 0  # files that are not media
    failed: int = 0
    failures: list[tuple[str, str]] = field(default_factory=list)  # (URL, reason), the first SHOWN_FAILURES

    def fail(self, url: str, reason: str) -> None:
        self.failed += 1
        if len(self.failures) < SHOWN_FAILURES:
            self.failures.append((url, reason))

    def to_json(self) -> dict[str, Any]:
        return {"success": self.failed == 0, "source": self.source, "dryRun": self.dry_run, "added": self.added,
                "replaced": self.replaced, "removed": self.removed, "unchanged": self.unchanged,
                "keptChanged": self.kept_changed, "keptGone": self.kept_gone, "ignored": self.ignored,
                "failed": self.failed, "failures": [{"source": u, "error": e} for u, e in self.failures]}


# what a sync does to one object or sample: add, replace, delete, disable, keep-changed,
# keep-gone, fail; called with the URL and, for a sample, its id
EventFn = Callable[[str, str, int | None], None]
ProgressFn = Callable[[int, SyncReport], None]


def sync(store: Store, location: str, opts: SyncOptions, on_event: EventFn | None = None,
         on_progress: ProgressFn | None = None, source: Source | None = None, page: int = PAGE) -> SyncReport:
    """Sync the project with the folder or fsspec URL ``location`` (``source``: an opened one)."""
    opts.check()
    src = source or open_source(location)
    report = SyncReport(src.url, opts.dry_run)
    known: dict[str, Synced] = {}
    for url, s in synced(store, opts.key, src.prefix):
        known.setdefault(url, s)
    run = _Run(store, src, opts, report, on_event or (lambda *_: None))
    listed = 0
    for objects in src.pages(page):
        listed += len(objects)
        run.page(objects, known)
        if on_progress:
            report.ignored = src.ignored
            on_progress(listed, report)
    run.flush_adds()
    report.ignored = src.ignored
    run.gone(known)
    if on_progress:
        on_progress(listed, report)
    return report


class _Run:
    def __init__(self, store: Store, src: Source, opts: SyncOptions, report: SyncReport, event: EventFn) -> None:
        self.store, self.src, self.opts, self.report, self.event = store, src, opts, report, event
        self.adds: list[SourceObject] = []

    def page(self, objects: list[SourceObject], known: dict[str, Synced]) -> None:
        changed: list[tuple[SourceObject, Synced, bytes | None]] = []
        to_hash: list[tuple[SourceObject, Synced]] = []
        stamps: list[tuple[int, str, str]] = []
        for o in objects:
            s = known.pop(o.url, None)
            if s is None:
                self.adds.append(o)
            elif s.stamp == o.stamp:
                self.report.unchanged += 1
            elif o.etag is not None:  # an object store's version
                if o.etag == s.etag:
                    self.report.unchanged += 1
                    stamps.append((s.sample_id, o.url, o.stamp))
                else:
                    changed.append((o, s, None))
            else:  # a file: its version is its content
                to_hash.append((o, s))
        if to_hash:
            for (o, s), got in zip(to_hash, self.src.read([o for o, _ in to_hash]), strict=True):
                if isinstance(got, OSError):
                    self._fail(o.url, f"cannot read it: {got.strerror or got}", s.sample_id)
                elif hashlib.sha256(got).hexdigest() in (s.etag, s.content_hash):
                    self.report.unchanged += 1
                    stamps.append((s.sample_id, o.url, o.stamp))
                else:
                    changed.append((o, s, got))
        if stamps and not self.opts.dry_run:
            set_stamps(self.store, stamps)
        for o, s, data in changed:
            self._change(o, s, data)
        if len(self.adds) >= ADD_BATCH:
            self.flush_adds()

    def _fail(self, url: str, reason: str, sample_id: int | None = None) -> None:
        self.report.fail(url, reason)
        self.event("fail", url, sample_id)

    def _change(self, o: SourceObject, s: Synced, data: bytes | None) -> None:
        if self.opts.on_change == "keep":
            self.report.kept_changed += 1
            self.event("keep-changed", o.url, s.sample_id)
            return
        if self.opts.dry_run:
            self.report.replaced += 1
            self.event("replace", o.url, s.sample_id)
            return
        if data is None:
            [got] = self.src.read([o])
            if isinstance(got, OSError):
                self._fail(o.url, f"cannot read it: {got.strerror or got}", s.sample_id)
                return
            data = got
        try:
            content_hash, info = prepare(self.store, UploadItem(source=o.url, name=o.name, data=data))
        except InvalidInput as e:
            self._fail(o.url, str(e), s.sample_id)
            return
        version = o.etag or content_hash
        local = o.etag is None
        try:
            replace_media(self.store, s.sample_id, content_hash, info.media_type, info.ext, info,
                          {self.opts.etag_key: version}, (o.url, o.stamp) if local else None)
        except BaseException:
            if content_hash not in self.store.existing_hashes([content_hash]):
                self.store.blobs.remove(content_hash)
            raise
        self.report.replaced += 1
        self.event("replace", o.url, s.sample_id)

    def _item(self, o: SourceObject, data: bytes | None) -> UploadItem:
        label: Any = None
        if self.opts.label_from == "filename":
            label = INFER
        elif self.opts.label_from == "folder":
            label = o.folder
        md = {**self.opts.metadata, self.opts.key: o.url}
        if o.etag is not None:
            md[self.opts.etag_key] = o.etag
        local = o.etag is None and data is None
        return UploadItem(source=o.url, name=o.name, category=self.opts.category, label=label, metadata=md,
                          path=Path(o.url) if local else None, data=data,
                          hash_key=None if o.etag is not None else self.opts.etag_key)

    def flush_adds(self) -> None:
        adds, self.adds = self.adds, []
        if not adds:
            return
        if self.opts.dry_run:
            for o in adds:
                self.report.added += 1
                self.event("add", o.url, None)
            return
        local = all(o.etag is None for o in adds) and isinstance(self.src, FolderSource)
        items: list[UploadItem] = []
        if local:
            items = [self._item(o, None) for o in adds]
        else:
            for i in range(0, len(adds), 64):  # an object store's bytes, a few at a time in memory
                part = adds[i:i + 64]
                for o, data in zip(part, self.src.read(part), strict=True):
                    if isinstance(data, OSError):
                        self._fail(o.url, f"cannot read it: {data}")
                    else:
                        items.append(self._item(o, data))
        by_url = {o.url: o for o in adds}
        result = upload(self.store, items)
        stamps: list[tuple[int, str, str]] = []
        for out in result.outcomes:
            if out.status == "added" and out.id is not None:
                self.report.added += 1
                self.event("add", out.source, out.id)
                o = by_url[out.source]
                if o.etag is None:
                    stamps.append((out.id, o.url, o.stamp))
            else:
                self._fail(out.source, out.error or out.status)
        set_stamps(self.store, stamps)

    def gone(self, known: dict[str, Synced]) -> None:
        """The samples whose source object is gone, by --on-delete."""
        if not known:
            return
        how = self.opts.on_delete
        if how == "keep":
            for url, s in known.items():
                self.report.kept_gone += 1
                self.event("keep-gone", url, s.sample_id)
            return
        todo: list[tuple[str, int]] = []
        for url, s in known.items():
            if how == "disable" and s.is_disabled:
                self.report.kept_gone += 1
            else:
                todo.append((url, s.sample_id))
        for i in range(0, len(todo), 500):  # one transaction per chunk: a kill leaves whole chunks
            chunk = todo[i:i + 500]
            ids = [sid for _, sid in chunk]
            if not self.opts.dry_run:
                if how == "delete":
                    self.store.delete_samples(ids)
                else:
                    self.store.set_disabled(ids, True)
            for url, sid in chunk:
                self.report.removed += 1
                self.event(how, url, sid)
