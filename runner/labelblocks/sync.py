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
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from .errors import InvalidInput
from .model import check_text
from .sources import PAGE, FolderSource, Source, SourceObject, open_source
from .store import Store
from .store.sources import Synced, remember_source, replace_media, set_stamps, source_settings, synced, versions
from .uploads import INFER, Outcome, UploadItem, prepare, upload

OnDelete = Literal["delete", "disable", "keep"]
OnChange = Literal["replace", "keep"]
LabelFrom = Literal["folder", "filename", "none"]
READ_AHEAD = 64  # an object store's new objects read into memory together
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
    metadata: dict[str, str] = field(default_factory=dict)  # what new files got (remembered for the source)

    def fail(self, url: str, reason: str) -> None:
        self.failed += 1
        if len(self.failures) < SHOWN_FAILURES:
            self.failures.append((url, reason))

    def to_json(self) -> dict[str, Any]:
        return {"success": self.failed == 0, "source": self.source, "dryRun": self.dry_run, "added": self.added,
                "replaced": self.replaced, "removed": self.removed, "unchanged": self.unchanged,
                "keptChanged": self.kept_changed, "keptGone": self.kept_gone, "ignored": self.ignored,
                "failed": self.failed, "failures": [{"source": u, "error": e} for u, e in self.failures],
                "metadata": self.metadata}


# what a sync does to one object or sample: add, replace, delete, disable, keep-changed,
# keep-gone, fail; called with the URL and, for a sample, its id
EventFn = Callable[[str, str, int | None], None]
ProgressFn = Callable[[int, SyncReport], None]


def sync(store: Store, location: str, opts: SyncOptions, on_event: EventFn | None = None,
         on_progress: ProgressFn | None = None, source: Source | None = None, page: int = PAGE) -> SyncReport:
    """Sync the project with the folder or fsspec URL ``location`` (``source``: an opened one)."""
    opts.check()
    src = source or open_source(location)
    # the metadata given to this source's new files before is given again, with this sync's on top
    remembered = source_settings(store, src.url) or {}
    given = dict(opts.metadata)
    opts.metadata = {**remembered.get("metadata", {}), **given}
    opts.check()
    report = SyncReport(src.url, opts.dry_run)
    report.metadata = dict(opts.metadata)
    known = synced(store, src.prefix)
    run = _Run(store, src, opts, report, on_event or (lambda *_: None), on_progress)
    adds = run.walk(src.pages(page, known), known)
    if opts.dry_run:
        for o in adds:
            report.added += 1
            run.event("add", o.url, None)
    else:  # one upload for every new object: its workers read ahead while it inserts
        upload(store, run.items(adds), on_progress=run.uploaded)
    for o, sid in run.changed:  # after the adds: a replaced sample's old blob may be a new sample's
        run.change(o, sid)
    run.gone(known)
    run.progress()
    if not opts.dry_run and (given or remembered) and opts.metadata != remembered.get("metadata"):
        remember_source(store, src.url, {**remembered, "metadata": opts.metadata})
    return report


class _Run:
    def __init__(self, store: Store, src: Source, opts: SyncOptions, report: SyncReport, event: EventFn,
                 on_progress: ProgressFn | None) -> None:
        self.store, self.src, self.opts, self.report, self.event = store, src, opts, report, event
        self.on_progress = on_progress
        self.listed = 0  # objects the source yielded (new, or known with another stamp)
        self.unchanged = 0  # of those, files found unchanged by content
        self.changed: list[tuple[SourceObject, int]] = []  # (object, sample id)
        self.label: Callable[[SourceObject], Any] = {
            "filename": lambda o: INFER, "folder": lambda o: o.folder, "none": lambda o: None}[opts.label_from]

    def progress(self) -> None:
        self.report.ignored = self.src.ignored
        self.report.unchanged = self.src.unchanged + self.unchanged
        if self.on_progress:
            self.on_progress(self.src.unchanged + self.listed, self.report)

    def walk(self, pages: Iterator[list[SourceObject]], known: dict[str, Synced]) -> Iterator[SourceObject]:
        """The objects to add, page by page; unchanged ones are counted and changed ones kept
        for later on the way."""
        for objects in pages:
            self.listed += len(objects)
            yield from self._page(objects, known)
            self.progress()

    def _page(self, objects: list[SourceObject], known: dict[str, Synced]) -> list[SourceObject]:
        adds: list[SourceObject] = []
        stale: list[tuple[SourceObject, int]] = []  # known with another stamp (the source skipped the same): compare
        for o in objects:
            s = known.pop(o.url, None)
            if s is None:
                adds.append(o)
            else:
                stale.append((o, s[0]))
        if stale:
            self._compare(stale)
        return adds

    def _compare(self, stale: list[tuple[SourceObject, int]]) -> None:
        """Objects whose stamp differs from the one recorded: an object store's (its ETag) has
        changed; a file whose content is the sample's is unchanged (touched only)."""
        files = [o for o, _ in stale if o.etag is None]
        have = versions(self.store, [sid for o, sid in stale if o.etag is None])
        stamps: list[tuple[int, str, str]] = []
        contents = dict(zip((o.url for o in files), self.src.read(files), strict=True)) if files else {}
        for o, sid in stale:
            if o.etag is not None:  # an object's stamp is its ETag: it changed
                self.changed.append((o, sid))
                continue
            v = have.get(sid)
            if v is None:  # deleted since the sync began
                continue
            got = contents[o.url]
            if isinstance(got, OSError):
                self._fail(o.url, f"cannot read it: {got.strerror or got}", sid)
                continue
            if hashlib.sha256(got).hexdigest() == v.content_hash:
                self.unchanged += 1
                stamps.append((sid, o.url, o.stamp))
            else:
                self.changed.append((o, sid))
        if stamps and not self.opts.dry_run:
            set_stamps(self.store, stamps)

    def _fail(self, url: str, reason: str, sample_id: int | None = None) -> None:
        self.report.fail(url, reason)
        self.event("fail", url, sample_id)

    def change(self, o: SourceObject, sample_id: int) -> None:
        """Replace the media of the sample ``s`` with the changed object ``o`` (or keep it)."""
        if self.opts.on_change == "keep":
            self.report.kept_changed += 1
            self.event("keep-changed", o.url, sample_id)
            return
        if self.opts.dry_run:
            self.report.replaced += 1
            self.event("replace", o.url, sample_id)
            return
        [got] = self.src.read([o])
        if isinstance(got, OSError):
            self._fail(o.url, f"cannot read it: {got.strerror or got}", sample_id)
            return
        try:
            content_hash, info = prepare(self.store, UploadItem(source=o.url, name=o.name, data=got))
        except InvalidInput as e:
            self._fail(o.url, str(e), sample_id)
            return
        try:
            replace_media(self.store, sample_id, content_hash, info.media_type, info.ext, info,
                          {self.opts.etag_key: o.etag or content_hash}, (o.url, o.stamp))
        except BaseException:
            if content_hash not in self.store.existing_hashes([content_hash]):
                self.store.blobs.remove(content_hash)
            raise
        self.report.replaced += 1
        self.event("replace", o.url, sample_id)

    def items(self, adds: Iterator[SourceObject]) -> Iterator[UploadItem]:
        """Upload items for the new objects: a file by its path, an object store's bytes read a
        few at a time."""
        local = isinstance(self.src, FolderSource)
        batch: list[SourceObject] = []
        for o in adds:
            if local:
                yield self._item(o, None)
                continue
            batch.append(o)
            if len(batch) >= READ_AHEAD:
                yield from self._read_items(batch)
                batch = []
        yield from self._read_items(batch)

    def _read_items(self, objects: list[SourceObject]) -> Iterator[UploadItem]:
        if not objects:
            return
        for o, data in zip(objects, self.src.read(objects), strict=True):
            if isinstance(data, OSError):
                self._fail(o.url, f"cannot read it: {data}")
            else:
                yield self._item(o, data)

    def _item(self, o: SourceObject, data: bytes | None) -> UploadItem:
        md = {**self.opts.metadata, self.opts.key: o.url}
        if o.etag is not None:
            md[self.opts.etag_key] = o.etag
        file = o.etag is None
        return UploadItem(source=o.url, name=o.name, category=self.opts.category, label=self.label(o), metadata=md,
                          path=Path(o.url) if data is None else None, data=data,
                          hash_key=self.opts.etag_key if file else None,
                          source_stamp=(o.url, o.stamp))

    def uploaded(self, out: Outcome) -> None:
        if out.status == "added":
            self.report.added += 1
            self.event("add", out.source, out.id)
        else:
            self._fail(out.source, out.error or out.status)

    def gone(self, known: dict[str, Synced]) -> None:
        """The samples whose source object is gone, by --on-delete."""
        if not known:
            return
        how = self.opts.on_delete
        if how == "keep":
            for url, (sid, _) in known.items():
                self.report.kept_gone += 1
                self.event("keep-gone", url, sid)
            return
        disabled = set()
        if how == "disable":
            have = versions(self.store, [sid for sid, _ in known.values()])
            disabled = {sid for sid, v in have.items() if v.is_disabled}
        todo: list[tuple[str, int]] = []
        for url, (sid, _) in known.items():
            if sid in disabled:
                self.report.kept_gone += 1
            else:
                todo.append((url, sid))
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
