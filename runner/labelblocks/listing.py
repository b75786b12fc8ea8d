"""The samples table of a SQLite project read with the standard library's ``sqlite3``: what
``samples list`` prints, without the store.

The store (:mod:`labelblocks.store`, SQLAlchemy Core) is the one way to write a project and
the general way to read one. Importing SQLAlchemy alone costs more than a reading command's
whole start-up budget (0.3 s), so a page of the table and a count are read here instead, for a
SQLite project at the current schema. The filter means the same as the store's
(``Store._conditions``); the tests compare both on generated filters. Anything else (a
project on a database server, a schema an older labelblocks made, a folder this process
cannot write) gets ``None`` from :func:`open_listing`, and the caller uses the store.
"""

from __future__ import annotations

import json
import os
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .constants import DB_CONFIG, DB_NAME, IDS_AS_PARAMETERS, SCHEMA_VERSION
from .filters import SampleFilter

_COLUMNS = "id, filename, category, label, bounding_boxes, structured_labels, is_disabled"


@dataclass
class ListedSample:
    """A sample as a table shows it: the fields of :class:`labelblocks.model.Sample` a
    listing prints, boxes and structured labels as their stored JSON objects."""

    id: int
    filename: str
    category: str
    label: str | None
    bounding_boxes: list[dict[str, Any]]
    structured_labels: list[dict[str, Any]]
    is_disabled: bool
    metadata: dict[str, str] = field(default_factory=dict)


def open_listing(data_dir: Path) -> Listing | None:
    """A listing of the project data folder ``data_dir``, or None where the store must read it."""
    db = data_dir / DB_NAME
    if (data_dir / DB_CONFIG).exists() or not db.is_file():
        return None
    if not (os.access(data_dir, os.W_OK) and os.access(db, os.W_OK)):
        return None  # the store opens a read-only project immutable; it knows how
    try:
        conn = sqlite3.connect(f"{db.as_uri()}?mode=rw", uri=True, timeout=30, isolation_level=None)
    except sqlite3.Error:
        return None
    try:
        conn.execute("PRAGMA query_only=ON")
        version = conn.execute("SELECT max(version) FROM schema_migrations").fetchone()[0]
    except sqlite3.Error:
        conn.close()
        return None
    if version != SCHEMA_VERSION:  # the store migrates it first
        conn.close()
        return None
    return Listing(conn)


class Listing:
    """Reads the samples table; :meth:`count` and :meth:`list_samples` mean what the store's do."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def close(self) -> None:
        self.conn.close()

    def count(self, f: SampleFilter) -> int:
        where, params = where_sql(f, counting=True)
        return int(self.conn.execute(f"SELECT count(*) FROM samples WHERE {where}", params).fetchone()[0])

    def list_samples(self, f: SampleFilter, limit: int | None = 50, offset: int = 0) -> list[ListedSample]:
        where, params = where_sql(f)
        sql = f"SELECT {_COLUMNS} FROM samples WHERE {where} ORDER BY id LIMIT ? OFFSET ?"
        # a read transaction: the page and its metadata from one snapshot
        self.conn.execute("BEGIN")
        try:
            rows = self.conn.execute(sql, [*params, -1 if limit is None else limit, offset]).fetchall()
            out = [ListedSample(r[0], r[1], r[2], r[3], json.loads(r[4]), json.loads(r[5]), bool(r[6]))
                   for r in rows]
            by_id = {s.id: s for s in out}
            ids = list(by_id)
            for i in range(0, len(ids), IDS_AS_PARAMETERS):
                chunk = ids[i : i + IDS_AS_PARAMETERS]
                for sid, k, v in self.conn.execute(
                    f"SELECT sample_id, key, value FROM sample_metadata WHERE sample_id IN ({_marks(chunk)}) "
                    "ORDER BY sample_id, key", chunk
                ):
                    by_id[sid].metadata[k] = v
        finally:
            self.conn.execute("COMMIT")
        return out


def _marks(values: list[Any]) -> str:
    return ", ".join("?" * len(values))


def where_sql(f: SampleFilter, counting: bool = False) -> tuple[str, list[Any]]:
    """The filter as a WHERE condition on ``samples`` and its parameters. ``counting``: as the
    store's, metadata equality as ``id IN (ids from the key/value index)`` (a count touches
    every match); a page keeps EXISTS, which stops after its first rows in id order."""
    parts: list[str] = []
    params: list[Any] = []
    if f.ids is not None:
        if not f.ids:
            parts.append("0")
        elif len(f.ids) <= IDS_AS_PARAMETERS:
            parts.append(f"id IN ({_marks(f.ids)})")
            params += f.ids
        else:
            parts.append("id IN (SELECT value FROM json_each(?))")
            params.append(json.dumps(list(f.ids)))
    if f.min_id is not None:
        parts.append("id >= ?")
        params.append(f.min_id)
    if f.max_id is not None:
        parts.append("id <= ?")
        params.append(f.max_id)
    for column, values in (("category", f.categories), ("label", f.labels)):
        if values:
            parts.append(f"{column} IN ({_marks(values)})")
            params += values
    if f.unlabeled:
        parts.append("(label IS NULL OR label = '') AND bounding_boxes = '[]' AND structured_labels = '[]'")
    if f.disabled_only:
        parts.append("is_disabled = 1")
    elif not f.include_disabled:
        parts.append("is_disabled = 0")
    if f.search:
        like = f.search.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        parts.append("filename LIKE ? ESCAPE '\\'")
        params.append(f"%{like}%")
    if f.data_type == "audio":
        parts.append("frequency IS NOT NULL")
    elif f.data_type == "image":
        parts.append("frequency IS NULL")
    md_parts: list[str] = []
    for c in f.metadata:
        any_of = f" AND value IN ({_marks(c.values)})" if c.values else ""
        if counting and c.op == "eq":
            md_parts.append(f"id IN (SELECT sample_id FROM sample_metadata WHERE key = ?{any_of})")
        else:
            ex = f"EXISTS (SELECT 1 FROM sample_metadata WHERE sample_id = samples.id AND key = ?{any_of})"
            md_parts.append(ex if c.op == "eq" else f"NOT {ex}")
        params += [c.key, *c.values]
    if f.no_metadata:
        md_parts.append("NOT EXISTS (SELECT 1 FROM sample_metadata WHERE sample_id = samples.id)")
    if md_parts:
        parts.append(" AND ".join(f"({p})" for p in md_parts) if f.combinator == "and"
                     else " OR ".join(f"({p})" for p in md_parts))
    return " AND ".join(f"({p})" for p in parts) or "1", params
