"""The project store: samples, labels and metadata in SQLite (WAL) or PostgreSQL, blobs beside them.

Every write happens in one transaction; a sample is never half-written. This module only hands
names on: the database (:mod:`.database`), reads (:mod:`.reads`) and writes (:mod:`.writes`) of
samples make :class:`Store` (:mod:`.sample_store`); the rows' shapes are in :mod:`.rows`; each
other family of tables has its module (jobs, sources, keys, evaluations, ...).
"""

from __future__ import annotations

from ..constants import BLOB_CACHE, BLOB_CONFIG, BLOB_DIR, DB_CONFIG, DB_NAME
from .database import _set_sqlite_pragmas, blob_store
from .rows import NewSample, PreparedChanges, _chunks
from .sample_store import Store

__all__ = ["BLOB_CACHE", "BLOB_CONFIG", "BLOB_DIR", "DB_CONFIG", "DB_NAME", "NewSample", "PreparedChanges", "Store",
           "_chunks", "_set_sqlite_pragmas", "blob_store"]
