"""Every statement on what ``labelblocks sync`` keeps: which samples were synced from which
source object, with the object's stamp when it was synced (``source_stamps``), the
replacement of a sample's media when its source object changed, and each source's settings
(``sync_sources``)."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select

from ..errors import NotFound
from ..model import MediaFields
from . import Store, _chunks
from .dialect import run, upsert
from .schema import samples, source_stamps, sync_sources

# a synced sample: its id, and its source object's stamp when it was last synced
Synced = tuple[int, str]


@dataclass(frozen=True)
class SyncedVersion:
    """What a synced sample holds now: its content, and whether it is disabled."""

    content_hash: str
    is_disabled: bool


def synced(store: Store, prefix: str) -> dict[str, Synced]:
    """{source URL: (sample id, stamp)} of every sample synced from a URL that starts with
    ``prefix``: one read of the sync's own table, with the driver's rows (a fraction of
    SQLAlchemy's cost per row)."""
    with store._read() as conn:
        cur = run(conn, "SELECT source, sample_id, stamp FROM source_stamps WHERE substr(source, 1, ?) = ?",
                  (len(prefix), prefix)).cursor
        return {url: (sid, stamp) for url, sid, stamp in cur.fetchall()}


def versions(store: Store, ids: Sequence[int]) -> dict[int, SyncedVersion]:
    """The :class:`SyncedVersion` of each sample of ``ids`` that exists."""
    out: dict[int, SyncedVersion] = {}
    with store._read() as conn:
        for chunk in _chunks(list(ids), 500):
            q = select(samples.c.id, samples.c.content_hash, samples.c.is_disabled).where(samples.c.id.in_(chunk))
            for sid, content_hash, disabled in conn.execute(q):
                out[sid] = SyncedVersion(content_hash, bool(disabled))
    return out


def set_stamps(store: Store, rows: Sequence[tuple[int, str, str]]) -> None:
    """Record (sample id, source URL, stamp) rows, replacing a sample's earlier stamp."""
    if not rows:
        return
    with store.transaction() as conn:
        for chunk in _chunks(rows, 500):
            upsert(conn, source_stamps, [{"sample_id": i, "source": u, "stamp": s} for i, u, s in chunk])


def replace_media(store: Store, sample_id: int, content_hash: str, media_type: str, ext: str, media: MediaFields,
                  set_metadata: dict[str, str], stamp: tuple[str, str]) -> None:
    """Give a sample new media (content, type and media fields) and metadata values, in one
    transaction: its id, labels, other metadata and history stay, its revision changes. The
    old blob is removed once no sample uses it."""
    with store.transaction() as conn:
        row = conn.execute(select(samples.c.content_hash).where(samples.c.id == sample_id)).first()
        if row is None:
            raise NotFound(f"no sample with id {sample_id}")
        old: str = row[0]
        values: dict[str, Any] = {"content_hash": content_hash, "media_type": media_type, "ext": ext, **media.media()}
        store._touch(conn, [sample_id], **values)
        store.update_metadata([sample_id], set_metadata, conn=conn)
        upsert(conn, source_stamps, [{"sample_id": sample_id, "source": stamp[0], "stamp": stamp[1]}])
        used = conn.execute(select(samples.c.id).where(samples.c.content_hash == old).limit(1)).first()
    if old != content_hash and used is None:
        store.blobs.remove(old)



def source_settings(store: Store, source: str) -> dict[str, Any] | None:
    """The settings remembered for ``source`` (its URL), or None."""
    with store._read() as conn:
        text = conn.execute(select(sync_sources.c.settings).where(sync_sources.c.source == source)).scalar_one_or_none()
    return json.loads(text) if text else None


def remember_source(store: Store, source: str, settings: dict[str, Any]) -> None:
    """Remember ``settings`` for ``source``, replacing what was remembered."""
    with store.transaction() as conn:
        upsert(conn, sync_sources, [{"source": source, "settings": json.dumps(settings, sort_keys=True),
                                     "updated_at": time.time()}])


def list_sources(store: Store) -> list[tuple[str, dict[str, Any], float]]:
    """Every source synced, with its settings and when they were last written."""
    with store._read() as conn:
        return [(src, json.loads(text), at) for src, text, at in conn.execute(
            select(sync_sources.c.source, sync_sources.c.settings, sync_sources.c.updated_at)
            .order_by(sync_sources.c.source))]
