"""The project store: samples, labels and metadata in SQLite (WAL), blobs beside it.

Every write happens in one transaction; a sample is never half-written.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import Field
from sqlalchemy import (
    ColumnElement,
    Connection,
    Engine,
    and_,
    create_engine,
    delete,
    event,
    exists,
    false,
    func,
    insert,
    literal,
    not_,
    or_,
    select,
    true,
    update,
)
from sqlalchemy.engine import Row

from .. import provenance
from ..constants import BLOB_CACHE as BLOB_CACHE
from ..constants import BLOB_CONFIG as BLOB_CONFIG
from ..constants import BLOB_DIR as BLOB_DIR
from ..constants import DB_CONFIG as DB_CONFIG
from ..constants import DB_NAME as DB_NAME
from ..constants import IDS_AS_PARAMETERS
from ..errors import InvalidInput, NotFound
from ..filters import SampleFilter
from ..model import (
    CATEGORIES,
    MEDIA_FIELDS,
    BoundingBox,
    MediaFields,
    Sample,
    SampleChange,
    StructuredLabel,
    normalise_structured_labels,
)
from .blobs import BlobStore, RemoteBlobStore, StoredFile, open_blob_store
from .dialect import Dialects, group_concat, is_postgres, json_ids, run
from .schema import (
    MIGRATIONS,
    current_version,
    metadata,
    sample_metadata,
    samples,
    schema_migrations,
    source_stamps,
)

_PG_WRITE_LOCK = "SELECT pg_advisory_xact_lock(7468001)"  # one writer at a time, as SQLite's BEGIN IMMEDIATE


class NewSample(MediaFields):
    """A sample about to be inserted (its blob already written)."""

    filename: str
    category: str
    content_hash: str
    media_type: str
    ext: str
    label: str | None = None
    bounding_boxes: list[BoundingBox] = Field(default_factory=list)
    structured_labels: list[StructuredLabel] = Field(default_factory=list)
    metadata: dict[str, str] = Field(default_factory=dict)
    is_disabled: bool = False
    source_stamp: tuple[str, str] | None = None  # a synced file's (source URL, stamp): see store.sources


def _dump_boxes(boxes: Sequence[BoundingBox]) -> str:
    return json.dumps([b.model_dump(by_alias=True, exclude_none=True, exclude={"score"}) for b in boxes])


def _dump_structured(labels: Sequence[StructuredLabel]) -> str:
    return json.dumps([s.model_dump(by_alias=True) for s in labels])


def _set_sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.execute("PRAGMA cache_size=-65536")
    cur.close()


def _sqlite_begin(conn: Connection) -> None:
    # writers take the lock up front (BEGIN IMMEDIATE), so two writers never deadlock on an
    # upgrade from a read lock; readers use a deferred transaction and never block writers (WAL)
    if conn.get_execution_options().get("lb_write"):
        conn.exec_driver_sql("BEGIN IMMEDIATE")
    else:
        conn.exec_driver_sql("BEGIN")


_PG_TYPES = {"is_disabled": "BOOLEAN"}  # a column a JSON text is cast to in PostgreSQL (TEXT otherwise)
_HAS_NUL = "\\u0000"  # how json.dumps writes a NUL character (or, harmlessly, a backslash before "u0000")


@dataclass
class PreparedChanges:
    """Changes to many samples, validated and ready to write (:meth:`Store.prepare_changes`):
    per combination of changed columns, the rows ``[id, value, ...]`` as JSON, and how many."""

    updates: list[tuple[tuple[str, ...], str, int]]
    metadata_ids: str | None  # JSON list of the samples whose metadata is replaced
    metadata_rows: str | None  # JSON list of [sample id, key, value]
    count: int  # changes prepared


def _writable(root: Path, db: Path) -> bool:
    """Whether this process can write the project's database and its folder (SQLite writes a
    journal beside the file)."""
    try:
        if os.statvfs(root).f_flag & os.ST_RDONLY:
            return False
    except (OSError, AttributeError):
        pass
    return os.access(db, os.W_OK) and os.access(root, os.W_OK)




def _id_in(column: Any, ids: Sequence[int]) -> ColumnElement[bool]:
    """``column IN ids``, for any number of ids (SQLite binds at most 32,766 parameters)."""
    if not ids:
        return false()
    if len(ids) <= IDS_AS_PARAMETERS:
        return column.in_(ids)  # type: ignore[no-any-return]
    return column.op("IN", is_comparison=True)(json_ids(literal(json.dumps(list(ids)))))  # type: ignore[no-any-return]



def _read_url(config: Path) -> str:
    try:
        return str(json.loads(config.read_text(encoding="utf-8"))["url"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise InvalidInput(f"cannot read {config}: {e}") from None


def blob_store(root: Path) -> BlobStore | RemoteBlobStore:
    """The blob store of the project data folder ``root``: its ``blobs`` folder, or the
    location its ``blobs.json`` names (``labelblocks init --blobs URL``)."""
    config = root / BLOB_CONFIG
    if not config.exists():
        return BlobStore(root / BLOB_DIR)
    try:
        url = json.loads(config.read_text(encoding="utf-8"))["url"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise InvalidInput(f"cannot read {config}: {e}") from None
    return open_blob_store(str(url), root / BLOB_CACHE)


class Store:
    """A project's samples. Open with :meth:`open`; use as a context manager or call close()."""

    def __init__(self, root: Path, engine: Engine) -> None:
        self.root = root
        self.engine = engine
        self.blobs = blob_store(root)
        self._write_lock = threading.RLock()

    # --- lifecycle -------------------------------------------------------------------------

    @classmethod
    def open(cls, root: Path | str, create: bool = False, url: str | None = None,
             password: str | None = None) -> Store:
        """Open the project data folder ``root`` (the ``.labelblocks`` folder), applying
        migrations. ``create`` makes the folder if it does not exist. The tables are in the
        SQLite file in the folder, or on the database server ``url`` (a PostgreSQL URL without
        its password; with ``create`` the folder remembers it), which ``password`` opens."""
        root = Path(root)
        if url is None and (root / DB_CONFIG).exists():
            url = _read_url(root / DB_CONFIG)
        if url is not None:
            return cls._open_server(root, url, create, password)
        db = root / DB_NAME
        if not db.exists() and not create:
            raise NotFound(f"no labelblocks database at {db}")
        if not create and not _writable(root, db):
            return cls._open_read_only(root, db)
        root.mkdir(parents=True, exist_ok=True)
        if create:
            blob_store(root).create_shards()
        engine = create_engine(f"sqlite:///{db}", future=True)
        event.listen(engine, "connect", _set_sqlite_pragmas)
        # take manual control of transactions so that BEGIN IMMEDIATE is used
        event.listen(engine, "connect", lambda c, r: setattr(c, "isolation_level", None))
        event.listen(engine, "begin", _sqlite_begin)
        store = cls(root, engine)
        store.migrate()
        return store

    @classmethod
    def _open_server(cls, root: Path, url: str, create: bool, password: str | None) -> Store:
        from sqlalchemy.engine import make_url
        from sqlalchemy.exc import ArgumentError

        try:
            parsed = make_url(url)
        except ArgumentError:
            raise InvalidInput(f"database URL {url!r}: expected postgresql+psycopg://USER@HOST:PORT/DATABASE") from None
        if parsed.password:
            raise InvalidInput("the database URL holds a password: leave it out, and give it in "
                               "LABELBLOCKS_DATABASE_PASSWORD (or `labelblocks secrets set LABELBLOCKS_DATABASE_PASSWORD`)")
        if parsed.get_backend_name() != "postgresql":
            raise InvalidInput(f"database URL {parsed.render_as_string()}: expected a PostgreSQL URL "
                               "(postgresql+psycopg://USER@HOST:PORT/DATABASE)")
        if parsed.drivername == "postgresql":
            parsed = parsed.set(drivername="postgresql+psycopg")
        if create:
            root.mkdir(parents=True, exist_ok=True)
            tmp = root / f".{DB_CONFIG}.{os.getpid()}"
            tmp.write_text(json.dumps({"url": parsed.render_as_string()}), encoding="utf-8")
            os.replace(tmp, root / DB_CONFIG)
            blob_store(root).create_shards()
        engine = create_engine(parsed.set(password=password) if password else parsed, pool_pre_ping=True, future=True)
        store = cls(root, engine)
        try:
            store.migrate()
        except Exception:
            engine.dispose()
            raise
        return store

    @classmethod
    def _open_read_only(cls, root: Path, db: Path) -> Store:
        """A project this process cannot write (a read-only mount, a shared folder): opened
        read-only, so that reading commands work and writing ones fail with one clear line
        (errors.storage_error). SQLite's WAL needs a writable folder even to read, so the file
        is opened immutable: nothing may write it meanwhile, which a read-only folder ensures."""
        from urllib.parse import quote

        engine = create_engine(f"sqlite:///file:{quote(str(db))}?mode=ro&immutable=1&uri=true", future=True)
        event.listen(engine, "connect", lambda c, r: setattr(c, "isolation_level", None))
        event.listen(engine, "begin", lambda conn: conn.exec_driver_sql("BEGIN"))
        store = cls(root, engine)
        with engine.connect() as conn:
            version = int(conn.exec_driver_sql("SELECT max(version) FROM schema_migrations").scalar() or 0)
        if version < MIGRATIONS[-1][0]:
            from ..errors import StorageError

            raise StorageError(f"the project at {root.parent} is read-only and was made by an older labelblocks: "
                               "open it once where it can be written, to upgrade it", 503)
        return store

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def migrate(self) -> int:
        """Apply pending migrations, each in its own transaction. Returns the schema version."""
        with self.transaction() as conn:
            version = current_version(conn)
            if version == 0 and is_postgres(conn):
                # a new PostgreSQL database starts at the latest schema (the steps before it
                # rebuilt SQLite files that PostgreSQL never had); later steps apply to both
                metadata.create_all(conn)
                now = time.time()
                conn.execute(insert(schema_migrations), [{"version": v, "applied_at": now} for v, _ in MIGRATIONS])
                return MIGRATIONS[-1][0]
        for v, fn in MIGRATIONS:
            if v <= version:
                continue
            with self.transaction() as conn:
                if current_version(conn) >= v:  # another process got there first
                    continue
                fn(conn)
                conn.execute(insert(schema_migrations).values(version=v, applied_at=time.time()))
            version = v
        return version

    @contextmanager
    def transaction(self) -> Iterator[Connection]:
        """A write transaction: committed when the block ends, rolled back on any error.

        Threads of one process queue on a lock first: SQLite's own wait for a busy database
        sleeps in growing steps, which under many concurrent writers (the HTTP API) costs far
        more than the writes. Other processes still wait through SQLite's busy timeout."""
        with self._write_lock, self.engine.connect().execution_options(lb_write=True) as conn, conn.begin():
            if is_postgres(conn):
                conn.exec_driver_sql(_PG_WRITE_LOCK)
            yield conn

    @contextmanager
    def _read(self) -> Iterator[Connection]:
        with self.engine.connect() as conn:
            yield conn

    # --- writing samples -------------------------------------------------------------------

    def add_samples(self, new: Sequence[NewSample], conn: Connection | None = None) -> list[int]:
        """Insert samples with their metadata in one transaction; returns their ids in order."""
        if not new:
            return []
        if conn is None:
            with self.transaction() as c:
                return self.add_samples(new, c)
        now = time.time()
        rows = []
        for s in new:
            if s.category not in CATEGORIES:
                raise InvalidInput(f"unknown category {s.category!r}: expected one of {', '.join(CATEGORIES)}")
            rows.append(
                {
                    "filename": s.filename,
                    "category": s.category,
                    "label": s.label,
                    "bounding_boxes": _dump_boxes(s.bounding_boxes),
                    "structured_labels": _dump_structured(s.structured_labels),
                    "is_disabled": s.is_disabled,
                    "media_type": s.media_type,
                    "ext": s.ext,
                    **s.media(),
                    "content_hash": s.content_hash,
                    "created_at": now,
                    "updated_at": now,
                }
            )
        if conn.dialect.name == "sqlite":
            # ids assigned under the write lock (BEGIN IMMEDIATE), so a plain executemany serves;
            # it is several times faster than INSERT ... RETURNING row by row
            start = int(conn.execute(select(func.coalesce(func.max(samples.c.id), 0))).scalar_one()) + 1
            ids = list(range(start, start + len(rows)))
            for r, i in zip(rows, ids, strict=True):
                r["id"] = i
            conn.execute(insert(samples), rows)
        else:
            result = conn.execute(insert(samples).returning(samples.c.id, sort_by_parameter_order=True), rows)
            ids = [r[0] for r in result]
        md_rows = [(i, k, v) for i, s in zip(ids, new, strict=True) for k, v in s.metadata.items()]
        if md_rows:  # the driver's executemany: a fraction of SQLAlchemy's per-row cost
            run(conn, "INSERT INTO sample_metadata (sample_id, key, value) VALUES (?, ?, ?)", md_rows)
        stamps = [(i, *s.source_stamp) for i, s in zip(ids, new, strict=True) if s.source_stamp is not None]
        if stamps:
            run(conn, "INSERT INTO source_stamps (sample_id, source, stamp) VALUES (?, ?, ?)", stamps)
        return ids

    def _touch(self, conn: Connection, ids: Sequence[int], **values: Any) -> int:
        values["updated_at"] = time.time()
        n = 0
        for chunk in _chunks(ids, 500):
            n += conn.execute(update(samples).where(samples.c.id.in_(chunk)).values(**values)).rowcount
        return n

    def _require(self, conn: Connection, sample_id: int) -> Row[Any]:
        row = conn.execute(select(samples).where(samples.c.id == sample_id)).first()
        if row is None:
            raise NotFound(f"no sample with id {sample_id}")
        return row

    def set_label(self, sample_id: int, label: str | None, by: str = "api") -> None:
        """Give the sample its single label, written by a person (``by``: api, cli, page)."""
        with self.transaction() as conn:
            row = self._require(conn, sample_id)
            before = _row_to_sample(row, {})
            after = before.model_copy(update={"label": label})
            record = provenance.contribute(before, provenance.load(row.provenance), after, provenance.person_writer(by))
            self._touch(conn, [sample_id], label=label, provenance=provenance.dump(record))

    def label_states(self, ids: Sequence[int]) -> dict[int, tuple[str | None, bool, str | None]]:
        """{id: (label, is disabled, provenance record text)} of the samples that exist among
        ``ids``, read in one range scan (what applying a label-only change needs)."""
        out: dict[int, tuple[str | None, bool, str | None]] = {}
        if not ids:
            return out
        wanted = set(ids)
        with self._read() as conn:
            rows = run(conn, "SELECT id, label, is_disabled, provenance FROM samples WHERE id BETWEEN ? AND ?",
                       (min(ids), max(ids)))
            for sid, label, disabled, text in rows.cursor.fetchall():
                if sid in wanted:
                    out[sid] = (label, bool(disabled), text)
        return out

    def provenance_texts(self, ids: Sequence[int], conn: Connection | None = None) -> dict[int, str]:
        """The stored provenance records (:mod:`labelblocks.provenance`) of those of ``ids`` that have one."""
        if conn is None:
            with self._read() as c:
                return self.provenance_texts(ids, c)
        out: dict[int, str] = {}
        for chunk in _chunks(ids, 10_000):
            out.update((r[0], r[1]) for r in conn.execute(select(samples.c.id, samples.c.provenance).where(
                and_(_id_in(samples.c.id, chunk), samples.c.provenance.is_not(None)))))
        return out

    def set_labels(self, ids: Sequence[int], label: str | None) -> int:
        """Give every sample of ``ids`` the single label ``label``, in one transaction."""
        with self.transaction() as conn:
            self._require_all(conn, ids)
            return self._touch(conn, ids, label=label)

    def clear_metadata(self, ids: Sequence[int]) -> int:
        """Remove all metadata of the samples ``ids``, in one transaction; how many had some."""
        with self.transaction() as conn:
            self._require_all(conn, ids)
            had: list[int] = []
            for chunk in _chunks(ids, 500):
                had += [r[0] for r in conn.execute(select(sample_metadata.c.sample_id).distinct()
                                                   .where(sample_metadata.c.sample_id.in_(chunk)))]
                conn.execute(delete(sample_metadata).where(sample_metadata.c.sample_id.in_(chunk)))
            self._touch(conn, had)
            return len(had)

    def rename_sample(self, sample_id: int, filename: str) -> None:
        """Give the sample a new file name (its media and labels stay)."""
        if not filename.strip() or len(filename.encode("utf-8", "surrogatepass")) > 255 or not filename.isprintable():
            raise InvalidInput(f"name {filename!r}: expected 1 to 255 bytes of printable text")
        with self.transaction() as conn:
            self._require(conn, sample_id)
            self._touch(conn, [sample_id], filename=filename)

    def set_bounding_boxes(self, sample_id: int, boxes: Sequence[BoundingBox], by: str = "api") -> None:
        """Replace the sample's boxes, written by a person (``by``: api, cli, page): a box
        that replaces one an action wrote at the same place is recorded as taken over."""
        with self.transaction() as conn:
            row = self._require(conn, sample_id)
            _check_boxes_fit(boxes, row.width, row.height, f"sample {sample_id}")
            before = _row_to_sample(row, {})
            after = before.model_copy(update={"bounding_boxes": list(boxes)})
            record = provenance.contribute(before, provenance.load(row.provenance), after, provenance.person_writer(by))
            self._touch(conn, [sample_id], bounding_boxes=_dump_boxes(boxes), provenance=provenance.dump(record))

    def set_structured_labels(self, sample_id: int, labels: Sequence[StructuredLabel]) -> None:
        with self.transaction() as conn:
            row = self._require(conn, sample_id)
            norm = _normalise_for(row, labels)
            self._touch(conn, [sample_id], structured_labels=_dump_structured(norm))

    def set_disabled(self, ids: Sequence[int], disabled: bool) -> int:
        with self.transaction() as conn:
            self._require_all(conn, ids)
            return self._touch(conn, ids, is_disabled=disabled)

    def delete_samples(self, ids: Sequence[int]) -> int:
        """Delete samples and their metadata; blobs no other sample uses are removed after
        the transaction commits."""
        with self.transaction() as conn:
            self._require_all(conn, ids)
            hashes: set[str] = set()
            for chunk in _chunks(ids, 500):
                hashes.update(
                    r[0] for r in conn.execute(select(samples.c.content_hash).where(samples.c.id.in_(chunk)))
                )
                conn.execute(delete(sample_metadata).where(sample_metadata.c.sample_id.in_(chunk)))
                conn.execute(delete(source_stamps).where(source_stamps.c.sample_id.in_(chunk)))
                conn.execute(delete(samples).where(samples.c.id.in_(chunk)))
            still_used: set[str] = set()
            for chunk in _chunks(sorted(hashes), 500):
                still_used.update(
                    r[0] for r in conn.execute(select(samples.c.content_hash).where(samples.c.content_hash.in_(chunk)))
                )
        for h in hashes - still_used:
            self.blobs.remove(h)
        return len(ids)

    def _require_all(self, conn: Connection, ids: Sequence[int]) -> None:
        found: set[int] = set()
        for chunk in _chunks(ids, 500):
            found.update(r[0] for r in conn.execute(select(samples.c.id).where(samples.c.id.in_(chunk))))
        missing = [i for i in ids if i not in found]
        if missing:
            shown = ", ".join(str(i) for i in missing[:10])
            raise NotFound(f"no sample with id {shown}" + (" ..." if len(missing) > 10 else ""))

    def update_metadata(
        self,
        ids: Sequence[int],
        set_values: dict[str, str] | None = None,
        unset_keys: Sequence[str] = (),
        conn: Connection | None = None,
    ) -> int:
        """Set and/or remove metadata keys on samples, in one transaction.
        Returns how many samples actually changed."""
        if conn is None:
            with self.transaction() as c:
                self._require_all(c, ids)
                return self.update_metadata(ids, set_values, unset_keys, c)
        set_values = set_values or {}
        changed: set[int] = set()
        for chunk in _chunks(ids, 400):
            current: dict[int, dict[str, str]] = {i: {} for i in chunk}
            for sid, k, v in conn.execute(
                select(sample_metadata.c.sample_id, sample_metadata.c.key, sample_metadata.c.value).where(
                    sample_metadata.c.sample_id.in_(chunk)
                )
            ):
                current[sid][k] = v
            for sid, md in current.items():
                if any(md.get(k) != v for k, v in set_values.items()) or any(k in md for k in unset_keys):
                    changed.add(sid)
            ch = [i for i in chunk if i in changed]
            if not ch:
                continue
            keys = list(set_values) + list(unset_keys)
            conn.execute(
                delete(sample_metadata).where(
                    and_(sample_metadata.c.sample_id.in_(ch), sample_metadata.c.key.in_(keys))
                )
            )
            if set_values:
                conn.execute(
                    insert(sample_metadata),
                    [{"sample_id": i, "key": k, "value": v} for i in ch for k, v in set_values.items()],
                )
            self._touch(conn, ch)
        return len(changed)

    def apply_changes(self, conn: Connection, items: Sequence[tuple[int, SampleChange]]) -> None:
        """Apply many samples' changes inside the caller's transaction (see
        :meth:`prepare_changes` and :meth:`write_changes`)."""
        self.write_changes(conn, self.prepare_changes(items, conn))

    def prepare_changes(self, items: Sequence[tuple[int, SampleChange]], conn: Connection | None = None,
                        missing_ok: bool = False, records: Mapping[int, str | None] | None = None) -> PreparedChanges:
        """Validate many samples' changes and turn them into the few statements that write
        them (one per combination of changed fields). One bad change raises here, before
        any write. Reads only what never changes (the samples' dimensions), so this may run
        outside the writing transaction. A sample that does not exist raises NotFound when
        its change needs its dimensions, or with ``missing_ok`` is left out (``count`` says
        how many changes were kept). ``records`` are the provenance records written with the
        changes (:mod:`labelblocks.provenance`; a sample not in it keeps its record)."""
        if conn is None:
            with self._read() as c:
                return self.prepare_changes(items, c, missing_ok, records)
        # dimensions are needed only to check boxes and normalise structured labels
        dims_ids = [sid for sid, ch in items if ch.bounding_boxes is not None or ch.structured_labels is not None]
        dims: dict[int, Any] = {}
        for chunk in _chunks(dims_ids, 500):
            dims.update((r.id, r) for r in conn.execute(
                select(samples.c.id, samples.c.width, samples.c.height, samples.c.values_count)
                .where(samples.c.id.in_(chunk))))
        groups: dict[tuple[str, ...], list[tuple[Any, ...]]] = {}
        md_ids: list[int] = []
        md_rows: list[tuple[int, str, str]] = []
        kept = 0
        for sid, ch in items:
            if missing_ok and (ch.bounding_boxes is not None or ch.structured_labels is not None) and sid not in dims:
                continue
            kept += 1
            cols: list[str] = []
            vals: list[Any] = [sid]
            if ch.label is not None:
                cols.append("label")
                vals.append(ch.label)
            if ch.is_disabled is not None:
                cols.append("is_disabled")
                vals.append(ch.is_disabled)
            if ch.bounding_boxes is not None:
                row = dims.get(sid)
                if row is None:
                    raise NotFound(f"no sample with id {sid}")
                _check_boxes_fit(ch.bounding_boxes, row.width, row.height, f"sample {sid}")
                cols.append("bounding_boxes")
                vals.append(_dump_boxes(ch.bounding_boxes))
            if ch.structured_labels is not None:
                cols.append("structured_labels")
                if sid not in dims:
                    raise NotFound(f"no sample with id {sid}")
                vals.append(_dump_structured(_normalise_for(dims[sid], ch.structured_labels)))
            if records is not None and sid in records:
                cols.append("provenance")
                vals.append(records[sid])
            if ch.metadata is not None:
                md_ids.append(sid)
                md_rows.extend((sid, k, v) for k, v in ch.metadata.items())
            groups.setdefault(tuple(cols), []).append(tuple(vals))
        return PreparedChanges(
            [(cols, json.dumps(rows), len(rows)) for cols, rows in groups.items()],
            json.dumps(md_ids) if md_ids else None, json.dumps(md_rows) if md_rows else None, kept)

    def write_changes(self, conn: Connection, prepared: PreparedChanges) -> None:
        """Write prepared changes inside the caller's transaction: each statement goes over
        its rows as JSON in SQLite (json_each), without a round trip per row. A sample that
        does not exist raises NotFound (and the caller's transaction rolls back)."""
        now = time.time()
        pg = is_postgres(conn)
        for cols, payload, n in prepared.updates:
            # the column names come from the fixed set in prepare_changes
            if _HAS_NUL in payload:  # SQLite's ->> would cut a text at its NUL: these rows go one by one
                sets = "".join(f"{c} = ?, " for c in cols)
                updated = run(conn, f"UPDATE samples SET {sets}updated_at = ? WHERE id = ?",
                              [(*row[1:], now, row[0]) for row in json.loads(payload)]).rowcount
            elif pg:
                sets = "".join(f"{c} = CAST(j.value->>{i} AS {_PG_TYPES.get(c, 'TEXT')}), " for i, c in enumerate(cols, 1))
                updated = run(conn, f"UPDATE samples SET {sets}updated_at = ? FROM json_array_elements(CAST(? AS json)) "
                                    "AS j(value) WHERE samples.id = CAST(j.value->>0 AS BIGINT)", (now, payload)).rowcount
            else:
                sets = "".join(f"{c} = j.value->>{i}, " for i, c in enumerate(cols, 1))
                updated = conn.exec_driver_sql(
                    f"UPDATE samples SET {sets}updated_at = ? FROM json_each(?) AS j WHERE samples.id = j.value->>0",
                    (now, payload)).rowcount
            if updated != n:
                ids = [row[0] for row in json.loads(payload)]
                known = self.revisions(ids, conn)
                missing = [sid for sid in ids if sid not in known]
                raise NotFound(f"no sample with id {', '.join(map(str, missing[:10]))}")
        if prepared.metadata_ids is not None:
            conn.execute(delete(sample_metadata).where(
                _id_in(sample_metadata.c.sample_id, json.loads(prepared.metadata_ids))))
        if prepared.metadata_rows is not None and _HAS_NUL in prepared.metadata_rows:
            run(conn, "INSERT INTO sample_metadata (sample_id, key, value) VALUES (?, ?, ?)",
                [tuple(row) for row in json.loads(prepared.metadata_rows)])
        elif prepared.metadata_rows is not None:
            run(conn, Dialects(
                "INSERT INTO sample_metadata (sample_id, key, value) SELECT value->>0, value->>1, value->>2 "
                "FROM json_each(?)",
                "INSERT INTO sample_metadata (sample_id, key, value) SELECT CAST(value->>0 AS BIGINT), value->>1, "
                "value->>2 FROM json_array_elements(CAST(? AS json)) AS value"), (prepared.metadata_rows,))

    def audio_ids(self, ids: Sequence[int]) -> set[int]:
        """The audio samples among ``ids`` (the others are images)."""
        with self._read() as conn:
            return {r[0] for r in conn.execute(select(samples.c.id).where(_id_in(samples.c.id, ids))
                                               .where(samples.c.frequency.is_not(None)))}

    def revisions(self, ids: Sequence[int], conn: Connection | None = None) -> dict[int, float]:
        """{id: updated_at} of the samples that exist among ``ids``. Every write to a sample
        changes its updated_at, so (id, updated_at) names one state of a sample."""
        if conn is None:
            with self._read() as c:
                return self.revisions(ids, c)
        out: dict[int, float] = {}
        if not ids:
            return out
        lo, hi = min(ids), max(ids)
        if hi - lo < 4 * len(ids):  # dense: one range scan beats long IN lists
            wanted = set(ids)
            rows = run(conn, "SELECT id, updated_at FROM samples WHERE id BETWEEN ? AND ?", (lo, hi))
            for sid, rev in rows.cursor.fetchall():
                if sid in wanted:
                    out[sid] = rev
            return out
        for chunk in _chunks(ids, 500):
            out.update((sid, rev) for sid, rev in conn.execute(select(samples.c.id, samples.c.updated_at).where(samples.c.id.in_(chunk))))
        return out

    def samples_and_revisions(self, ids: Sequence[int]) -> tuple[list[Sample], dict[int, float]]:
        """The samples that exist among ``ids`` (in order) and their revisions, read in one
        transaction, so each revision is that of the sample returned."""
        with self.engine.connect() as conn, conn.begin():
            return self.get_samples(ids, conn, missing_ok=True), self.revisions(ids, conn)

    def set_categories(self, assignments: dict[int, str], conn: Connection | None = None) -> int:
        if conn is None:
            with self.transaction() as c:
                return self.set_categories(assignments, c)
        by_cat: dict[str, list[int]] = {}
        for sid, cat in assignments.items():
            if cat not in CATEGORIES:
                raise InvalidInput(f"unknown category {cat!r}: expected one of {', '.join(CATEGORIES)}")
            by_cat.setdefault(cat, []).append(sid)
        n = 0
        for cat, ids in by_cat.items():
            n += self._touch(conn, ids, category=cat)
        return n

    # --- reading samples -------------------------------------------------------------------

    def where(self, f: SampleFilter, counting: bool = False) -> ColumnElement[bool]:
        """The filter as a condition on the samples table (for statements in ``store/``)."""
        return and_(true(), *self._conditions(f, counting))

    def _conditions(self, f: SampleFilter, counting: bool = False) -> list[ColumnElement[bool]]:
        """The filter as SQL. ``counting``: metadata equality as ``id IN (ids from the
        key/value index)``, which SQLite drives from the index (a count touches every match;
        8x faster than a correlated EXISTS per sample); a page keeps EXISTS, which stops after
        its first rows in id order."""
        s = samples.c
        parts: list[ColumnElement[bool]] = []
        if f.ids is not None:
            parts.append(_id_in(s.id, f.ids))
        if f.min_id is not None:
            parts.append(s.id >= f.min_id)
        if f.max_id is not None:
            parts.append(s.id <= f.max_id)
        if f.categories:
            parts.append(s.category.in_(f.categories))
        if f.labels:
            parts.append(s.label.in_(f.labels))
        if f.unlabeled:
            parts.append(
                and_(
                    or_(s.label.is_(None), s.label == ""),
                    s.bounding_boxes == "[]",
                    s.structured_labels == "[]",
                )
            )
        if f.disabled_only:
            parts.append(s.is_disabled == true())
        elif not f.include_disabled:
            parts.append(s.is_disabled == false())
        if f.search:
            like = f.search.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            parts.append(s.filename.like(f"%{like}%", escape="\\"))
        if f.data_type == "audio":
            parts.append(s.frequency.is_not(None))
        elif f.data_type == "image":
            parts.append(s.frequency.is_(None))
        md_parts: list[ColumnElement[bool]] = []
        m = sample_metadata.c
        for c in f.metadata:
            if counting and c.op == "eq":
                sub = select(m.sample_id).where(m.key == c.key)
                md_parts.append(s.id.in_(sub.where(m.value.in_(c.values)) if c.values else sub))
                continue
            cond = and_(m.sample_id == s.id, m.key == c.key)
            if c.values:
                cond = and_(cond, m.value.in_(c.values))
            ex = exists().where(cond)
            md_parts.append(ex if c.op == "eq" else not_(ex))
        if f.no_metadata:
            md_parts.append(not_(exists().where(m.sample_id == s.id)))
        if md_parts:
            parts.append(and_(*md_parts) if f.combinator == "and" else or_(*md_parts))
        return parts

    def scan(self, f: SampleFilter, *columns: str) -> list[tuple[Any, ...]]:
        """Raw rows (id, *columns) of the samples matching ``f``, by id: for bulk work over
        hundreds of thousands of samples, without building a Sample per row."""
        q = select(samples.c.id, *(samples.c[c] for c in columns)).where(self.where(f)).order_by(samples.c.id)
        with self._read() as conn:
            return list(conn.execute(q).cursor.fetchall())

    def metadata_options(self, f: SampleFilter) -> list[tuple[str, list[str]]]:
        """Each metadata key of the samples ``f`` selects, with its distinct values, by key."""
        q = (select(sample_metadata.c.key, sample_metadata.c.value).distinct()
             .where(sample_metadata.c.sample_id.in_(select(samples.c.id).where(self.where(f))))
             .order_by(sample_metadata.c.key, sample_metadata.c.value))
        out: dict[str, list[str]] = {}
        with self._read() as conn:
            for k, v in conn.execute(q):
                out.setdefault(k, []).append(v)
        return list(out.items())

    def metadata_values(self, key: str) -> dict[int, str]:
        """{sample id: value} of every sample that has metadata ``key``."""
        with self._read() as conn:
            cur = run(conn, "SELECT sample_id, value FROM sample_metadata WHERE key = ?", (key,)).cursor
            return dict(cur.fetchall())

    def select_ids(self, f: SampleFilter, limit: int | None = None, offset: int = 0) -> list[int]:
        """The ids of the samples matching ``f``, in order; read as one text (group_concat),
        which costs a fraction of one Python row per sample."""
        q = select(samples.c.id).where(self.where(f)).order_by(samples.c.id)
        if limit is not None:
            q = q.limit(limit)
        if offset:
            q = q.offset(offset)
        with self._read() as conn:
            text = conn.execute(select(group_concat(q.subquery().c.id))).scalar_one()
        return sorted(map(int, text.split(","))) if text else []

    def count(self, f: SampleFilter | None = None) -> int:
        q = select(func.count()).select_from(samples)
        parts = self._conditions(f, counting=True) if f is not None else []
        if parts:  # without a WHERE clause SQLite counts from the table's b-tree, without a scan
            q = q.where(and_(*parts))
        with self._read() as conn:
            return int(conn.execute(q).scalar_one())

    def list_samples(
        self, f: SampleFilter | None = None, limit: int | None = 50, offset: int = 0, descending: bool = False
    ) -> list[Sample]:
        f = f or SampleFilter()
        q = select(samples).where(self.where(f)).order_by(samples.c.id.desc() if descending else samples.c.id)
        if limit is not None:
            q = q.limit(limit)
        if offset:
            q = q.offset(offset)
        with self._read() as conn:
            rows = list(conn.execute(q))
            return self._hydrate(conn, rows)

    def get_samples(self, ids: Sequence[int], conn: Connection | None = None, missing_ok: bool = False) -> list[Sample]:
        """Samples by id, in the order given. Raises NotFound for an unknown id, or with
        ``missing_ok`` leaves it out."""
        if conn is None:
            with self._read() as c:
                return self.get_samples(ids, c, missing_ok)
        rows: dict[int, Row[Any]] = {}
        for chunk in _chunks(ids, 500):
            rows.update((r.id, r) for r in conn.execute(select(samples).where(samples.c.id.in_(chunk))))
        missing = [i for i in ids if i not in rows]
        if missing and not missing_ok:
            raise NotFound(f"no sample with id {', '.join(map(str, missing[:10]))}")
        return self._hydrate(conn, [rows[i] for i in ids if i in rows])

    def get_sample(self, sample_id: int) -> Sample:
        return self.get_samples([sample_id])[0]

    def _hydrate(self, conn: Connection, rows: list[Row[Any]]) -> list[Sample]:
        md: dict[int, dict[str, str]] = {r.id: {} for r in rows}
        for chunk in _chunks(list(md), 500):
            for sid, k, v in conn.execute(
                select(sample_metadata.c.sample_id, sample_metadata.c.key, sample_metadata.c.value)
                .where(sample_metadata.c.sample_id.in_(chunk))
                .order_by(sample_metadata.c.sample_id, sample_metadata.c.key)
            ):
                md[sid][k] = v
        return [_row_to_sample(r, md[r.id]) for r in rows]

    def orphan_blobs(self, min_age: float) -> list[StoredFile]:
        """Files in the blob store that no sample references, older than ``min_age`` seconds:
        blobs left by a process killed between writing a blob and committing its sample, and
        temporary files of interrupted writes. Younger files are spared: an upload in progress
        writes its blobs before it commits."""
        with self._read() as conn:
            used = {r[0] for r in conn.execute(select(samples.c.content_hash).distinct())}
        cutoff = time.time() - min_age
        return [f for f in self.blobs.files() if f.hash not in used and f.mtime <= cutoff]

    def existing_files(self, files: Iterable[tuple[str, str]]) -> dict[tuple[str, str], int]:
        """The (content hash, file name) pairs among ``files`` that a sample has already, each
        with the id of the first such sample."""
        wanted = set(files)
        out: dict[tuple[str, str], int] = {}
        with self._read() as conn:
            for chunk in _chunks(sorted({h for h, _ in wanted}), 500):
                rows = conn.execute(select(samples.c.content_hash, samples.c.filename, samples.c.id)
                                    .where(samples.c.content_hash.in_(chunk)).order_by(samples.c.id))
                for h, n, i in rows:
                    if (h, n) in wanted:
                        out.setdefault((h, n), i)
        return out

    def existing_hashes(self, hashes: Iterable[str]) -> set[str]:
        out: set[str] = set()
        with self._read() as conn:
            for chunk in _chunks(list(hashes), 500):
                out.update(
                    r[0] for r in conn.execute(select(samples.c.content_hash).where(samples.c.content_hash.in_(chunk)))
                )
        return out

    def metadata_keys(self) -> list[tuple[str, int, int]]:
        """(key, distinct values, samples having it) for every metadata key."""
        m = sample_metadata.c
        q = (
            select(m.key, func.count(func.distinct(m.value)), func.count())
            .group_by(m.key)
            .order_by(m.key)
        )
        with self._read() as conn:
            return [(r[0], int(r[1]), int(r[2])) for r in conn.execute(q)]

    def blob_path(self, sample: Sample) -> Path:
        return self.blobs.path(sample.content_hash)


def _check_boxes_fit(boxes: Sequence[BoundingBox], width: int | None, height: int | None, what: str) -> None:
    if width is None or height is None:
        if boxes:
            raise InvalidInput(f"{what} is not an image: it cannot have bounding boxes")
        return
    for b in boxes:
        if not b.inside(width, height):
            raise InvalidInput(
                f"{what}: box {b.label!r} at x={b.x} y={b.y} width={b.width} height={b.height} "
                f"does not fit in the {width}x{height} image"
            )


def _normalise_for(row: Row[Any], labels: Sequence[StructuredLabel]) -> list[StructuredLabel]:
    if row.values_count is None and labels:
        raise InvalidInput(f"sample {row.id} is an image: structured labels belong to audio and time series")
    return normalise_structured_labels(list(labels), row.values_count)


def _ts(v: float) -> datetime:
    return datetime.fromtimestamp(v, tz=UTC)


def _row_to_sample(r: Row[Any], md: dict[str, str]) -> Sample:
    return Sample.model_construct(
        id=r.id,
        filename=r.filename,
        category=r.category,
        label=r.label,
        bounding_boxes=[BoundingBox.model_construct(**_snake_box(b)) for b in json.loads(r.bounding_boxes)],
        structured_labels=[
            StructuredLabel.model_construct(start_index=s["startIndex"], end_index=s["endIndex"], label=s["label"])
            for s in json.loads(r.structured_labels)
        ],
        metadata=md,
        is_disabled=bool(r.is_disabled),
        **{f: getattr(r, f) for f in MEDIA_FIELDS},
        content_hash=r.content_hash,
        media_type=r.media_type,
        created=_ts(r.created_at),
        updated=_ts(r.updated_at),
    )


def _snake_box(b: dict[str, Any]) -> dict[str, Any]:
    return {"label": b["label"], "x": b["x"], "y": b["y"], "width": b["width"], "height": b["height"], "score": None}


def _chunks(seq: Sequence[Any], n: int) -> Iterator[Sequence[Any]]:
    for i in range(0, len(seq), n):
        yield seq[i : i + n]
