"""Splits: the scans a split reads (one aggregate per column, far cheaper than a Python row
per sample) and its writes, with every statement on the split_runs table.

A split reads, places and writes in one transaction (:func:`connection`), so what it planned
is what the store holds when it ends.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
from sqlalchemy import ColumnElement, Connection, and_, case, func, literal, select, update

from ..errors import InvalidInput
from ..model import CATEGORIES
from . import Store
from .dialect import group_concat, json_ids, run
from .packed import pack_ids, unpack_ids
from .schema import sample_metadata, samples, split_runs

SEP = "\x1f"  # joins a text column's values in one aggregate (far cheaper than a Python row per sample)
_CATEGORY_CODE = case({c: i for i, c in enumerate(CATEGORIES)}, value=samples.c.category, else_=0)
_LABEL = func.coalesce(samples.c.label, "")


@contextmanager
def connection(store: Store, write: bool) -> Iterator[Connection]:
    """A split's connection: a write transaction (its reads and writes see one state), or,
    for a dry run or a check, a read."""
    if write:
        with store.transaction() as conn:
            yield conn
    else:
        with store.engine.connect() as conn:
            yield conn


def scan(conn: Connection, where: ColumnElement[bool],
         labels: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]] | None:
    """The selection's ids and category codes, sorted by id, the permutation that sorted them
    (an index may have driven the scan), and with ``labels`` the labels ('' for none) joined by
    SEP in scan order: one aggregate each. None for an empty selection."""
    texts = (_LABEL,) if labels else ()
    row = conn.execute(select(group_concat(samples.c.id), group_concat(_CATEGORY_CODE),
                              *(group_concat(t, SEP) for t in texts)).where(where)).one()
    if row[0] is None:
        return None
    ids = _ints(row[0])
    order = np.argsort(ids, kind="stable")
    return ids[order], _ints(row[1]).astype(np.int8)[order], order, list(row[2:])


def labels_by_id(conn: Connection, where: ColumnElement[bool]) -> dict[int, str]:
    """{id: label ('' for none)} of the selection, row by row (for labels holding SEP)."""
    return dict(conn.execute(select(samples.c.id, _LABEL).where(where)).cursor.fetchall())


def unlabeled_boxes(conn: Connection, where: ColumnElement[bool]) -> list[tuple[int, str]]:
    """(id, bounding boxes JSON) of the selection's samples without a label."""
    return list(conn.execute(select(samples.c.id, samples.c.bounding_boxes)
                             .where(and_(where, _LABEL == ""))).cursor.fetchall())


def key_column(conn: Connection, key: str) -> tuple[np.ndarray | None, Sequence[str]]:
    """(sample ids, values) of metadata ``key`` over the whole project; (None, []) when no
    sample has it."""
    sid_text, value_text = conn.execute(
        select(group_concat(sample_metadata.c.sample_id), group_concat(sample_metadata.c.value, SEP))
        .where(sample_metadata.c.key == key)).one()
    if sid_text is None:
        return None, []
    sids = _ints(sid_text)
    value_col: Sequence[str] = value_text.split(SEP)
    if len(value_col) != len(sids):  # a value with the separator in it: read them row by row
        rows = run(conn, "SELECT sample_id, value FROM sample_metadata WHERE key = ?", (key,)).cursor.fetchall()
        sids = np.array([r[0] for r in rows], dtype=np.int64)
        value_col = [r[1] for r in rows]
    return sids, value_col


def assigned_ids(conn: Connection) -> np.ndarray:
    """The ids of every sample an earlier split placed, sorted."""
    blobs = [unpack_ids(blob) for (blob,) in
             conn.execute(split_runs.select().with_only_columns(split_runs.c.sample_ids))]
    return np.unique(np.concatenate([np.asarray(b, dtype=np.int64) for b in blobs])) if blobs else \
        np.empty(0, dtype=np.int64)


def write_split(conn: Connection, moves: Mapping[str, list[int]], expected: int, placed: list[int],
                options: Mapping[str, Any]) -> None:
    """Move samples to their categories (``moves``: category -> ids) and record the samples
    this split placed, in the split's transaction; if fewer than ``expected`` samples moved
    (some were deleted meanwhile), nothing is written."""
    now = time.time()
    written = 0
    for cat, ids in moves.items():
        if ids:
            written += conn.execute(update(samples).where(samples.c.id.op("IN", is_comparison=True)(
                json_ids(literal(json.dumps(ids))))).values(category=cat, updated_at=now)).rowcount
    if written != expected:  # raising rolls the transaction back
        raise InvalidInput(f"{expected - written} of the samples to move were deleted meanwhile: "
                           "nothing was written; run the split again")
    if placed:
        conn.execute(split_runs.insert().values(options=json.dumps(dict(options)), sample_ids=pack_ids(placed),
                                                created_at=now))


def _ints(text: str) -> np.ndarray:
    return np.fromstring(text, dtype=np.int64, sep=",")
