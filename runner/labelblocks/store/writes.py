"""Writing samples: adding them, their labels, boxes, structured labels and metadata, changes
in bulk (prepared, then written in the few statements they need), deletions; each in one
transaction."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import (
    Connection,
    and_,
    delete,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.engine import Row

from .. import provenance
from ..errors import InvalidInput, NotFound
from ..model import (
    CATEGORIES,
    BoundingBox,
    SampleChange,
    StructuredLabel,
)
from .dialect import Dialects, is_postgres, run
from .reads import SampleReads
from .rows import (
    _HAS_NUL,
    _PG_TYPES,
    NewSample,
    PreparedChanges,
    _check_boxes_fit,
    _chunks,
    _dump_boxes,
    _dump_structured,
    _id_in,
    _normalise_for,
    _row_to_sample,
)
from .schema import (
    sample_metadata,
    samples,
    source_stamps,
)


class SampleWrites(SampleReads):
    """The store's writes of samples."""

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
