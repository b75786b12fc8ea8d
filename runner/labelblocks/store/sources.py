"""Every statement on what ``labelblocks sync`` keeps: the samples synced from a source (by
their ``source`` metadata), the stamps of their files, and the replacement of a sample's media
when its source object changed."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import and_, delete, select

from ..errors import NotFound
from ..model import MediaFields
from . import Store, _chunks
from .dialect import upsert
from .schema import sample_metadata, samples, source_stamps


@dataclass(frozen=True)
class Synced:
    """A sample synced from a source object: its id, the version (``source_etag``) and content
    it was synced at, and the stamp of the file when one was recorded."""

    sample_id: int
    etag: str | None
    content_hash: str
    stamp: str | None
    is_disabled: bool = False


def synced(store: Store, key: str, prefix: str, page: int = 20_000) -> Iterator[tuple[str, Synced]]:
    """(source URL, :class:`Synced`) of every sample whose metadata ``key`` starts with
    ``prefix``, read in pages of ``page`` rows. Where two samples name the same source, the
    lowest id comes first."""
    version = sample_metadata.alias("version")
    q = (select(sample_metadata.c.value, sample_metadata.c.sample_id, version.c.value, samples.c.content_hash,
                source_stamps.c.source, source_stamps.c.stamp, samples.c.is_disabled)
         .join(samples, samples.c.id == sample_metadata.c.sample_id)
         .outerjoin(version, and_(version.c.sample_id == sample_metadata.c.sample_id, version.c.key == f"{key}_etag"))
         .outerjoin(source_stamps, source_stamps.c.sample_id == sample_metadata.c.sample_id)
         .where(sample_metadata.c.key == key, sample_metadata.c.value.startswith(prefix, autoescape=True))
         .order_by(sample_metadata.c.sample_id))
    with store._read() as conn:
        result = conn.execution_options(yield_per=page).execute(q)
        for url, sid, etag, content_hash, stamped, stamp, disabled in result:
            yield url, Synced(sid, etag, content_hash, stamp if stamped == url else None, bool(disabled))


def set_stamps(store: Store, rows: Sequence[tuple[int, str, str]]) -> None:
    """Record (sample id, source URL, stamp) rows, replacing a sample's earlier stamp."""
    if not rows:
        return
    with store.transaction() as conn:
        for chunk in _chunks(rows, 500):
            upsert(conn, source_stamps, [{"sample_id": i, "source": u, "stamp": s} for i, u, s in chunk])


def replace_media(store: Store, sample_id: int, content_hash: str, media_type: str, ext: str, media: MediaFields,
                  set_metadata: dict[str, str], stamp: tuple[str, str] | None = None) -> None:
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
        if stamp is not None:
            upsert(conn, source_stamps, [{"sample_id": sample_id, "source": stamp[0], "stamp": stamp[1]}])
        else:
            conn.execute(delete(source_stamps).where(source_stamps.c.sample_id == sample_id))
        used = conn.execute(select(samples.c.id).where(samples.c.content_hash == old).limit(1)).first()
    if old != content_hash and used is None:
        store.blobs.remove(old)

