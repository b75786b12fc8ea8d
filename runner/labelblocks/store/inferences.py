"""Model versions and the inference log: every statement on the model_versions, inferences
and inference_metadata tables."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import and_, delete, func, insert, select

from ..errors import InvalidInput, NotFound
from . import Store
from .schema import inference_metadata, inferences, model_versions

# --- model versions --------------------------------------------------------------------------------------


def publish(store: Store, action: str, definition: Mapping[str, Any]) -> int:
    """Freeze ``definition`` as the action's next version; returns its number."""
    with store.transaction() as conn:
        last = conn.execute(select(func.max(model_versions.c.version)).where(model_versions.c.action == action)).scalar()
        version = int(last or 0) + 1
        conn.execute(insert(model_versions).values(action=action, version=version, definition=json.dumps(definition),
                                                   created_at=time.time()))
    return version


def get_version(store: Store, action: str, version: int | None) -> tuple[int, dict[str, Any]]:
    """(version, definition) of ``action``'s version (the latest when None)."""
    q = select(model_versions.c.version, model_versions.c.definition).where(model_versions.c.action == action)
    q = q.where(model_versions.c.version == version) if version is not None else \
        q.order_by(model_versions.c.version.desc()).limit(1)
    with store.engine.connect() as conn:
        row = conn.execute(q).first()
    if row is None:
        which = f"version {version} of action {action!r}" if version is not None else f"a published {action!r}"
        raise NotFound(f"no model {action}/{version if version is not None else '?'}: there is no {which} "
                       f"(`labelblocks actions publish {action}` makes one)")
    return int(row[0]), json.loads(row[1])


def list_versions(store: Store) -> list[tuple[str, int, float]]:
    with store.engine.connect() as conn:
        return [(str(a), int(v), float(t)) for a, v, t in conn.execute(
            select(model_versions.c.action, model_versions.c.version, model_versions.c.created_at)
            .order_by(model_versions.c.action, model_versions.c.version))]


# --- the log ---------------------------------------------------------------------------------------------


@dataclass
class Logged:
    id: str
    created_at: float
    model: str
    latency_ms: float
    error: str | None
    classes: list[str]
    confidences: list[float]
    width: int | None
    height: int | None
    content_hash: str
    media_type: str
    key_id: int | None
    image_kept: bool
    change: dict[str, Any]
    metadata: dict[str, str]

    def to_json(self) -> dict[str, Any]:
        return {"inference_id": self.id, "time": self.created_at, "model": self.model, "latency_ms": self.latency_ms,
                "error": self.error, "classes": self.classes, "confidences": self.confidences,
                "image": {"width": self.width, "height": self.height}, "content_hash": self.content_hash,
                "image_kept": self.image_kept, "metadata": self.metadata}


def log_inferences(store: Store, rows: Sequence[Mapping[str, Any]]) -> None:
    """Log answered inferences in one transaction (before they are answered)."""
    if not rows:
        return
    with store.transaction() as conn:
        conn.execute(insert(inferences), [dict(r) for r in rows])


def _logged(row: Any, md: dict[str, str]) -> Logged:
    return Logged(row.id, float(row.created_at), row.model, float(row.latency_ms), row.error, json.loads(row.classes),
                  json.loads(row.confidences), row.width, row.height, row.content_hash, row.media_type, row.key_id,
                  bool(row.image_kept), json.loads(row.change), md)


def list_inferences(store: Store, where: Mapping[str, str] | None = None, model: str | None = None,
                    since: float | None = None, until: float | None = None, limit: int | None = None) -> list[Logged]:
    """Logged inferences, newest first, with their custom metadata; ``where``: field values
    (all must match)."""
    q = select(inferences).order_by(inferences.c.created_at.desc())
    if model is not None:
        q = q.where(inferences.c.model == model)
    if since is not None:
        q = q.where(inferences.c.created_at >= since)
    if until is not None:
        q = q.where(inferences.c.created_at < until)
    for field, value in (where or {}).items():
        q = q.where(inferences.c.id.in_(select(inference_metadata.c.inference_id).where(and_(
            inference_metadata.c.field == field, inference_metadata.c.value == value))))
    if limit is not None:
        q = q.limit(limit)
    with store.engine.connect() as conn:
        rows = list(conn.execute(q))
        md: dict[str, dict[str, str]] = {r.id: {} for r in rows}
        ids = list(md)
        for start in range(0, len(ids), 500):
            for iid, field, value in conn.execute(select(inference_metadata).where(
                    inference_metadata.c.inference_id.in_(ids[start : start + 500]))):
                md[iid][field] = value
    return [_logged(r, md[r.id]) for r in rows]


def tag(store: Store, items: Sequence[tuple[Sequence[str], str, str]]) -> int:
    """Attach custom metadata: ``(inference ids, field, value)`` items, all or nothing.
    Raises InvalidInput listing the unknown ids (nothing written). Returns the rows written."""
    wanted = {i for ids, _, _ in items for i in ids}
    with store.transaction() as conn:
        known: set[str] = set()
        ids = list(wanted)
        for start in range(0, len(ids), 500):
            known.update(r[0] for r in conn.execute(select(inferences.c.id).where(
                inferences.c.id.in_(ids[start : start + 500]))))
        unknown = sorted(wanted - known)
        if unknown:
            raise InvalidInput(f"unknown inference ids: {', '.join(unknown[:20])}"
                               + (f" and {len(unknown) - 20} more" if len(unknown) > 20 else ""))
        n = 0
        for iids, field, value in items:
            conn.execute(delete(inference_metadata).where(and_(inference_metadata.c.inference_id.in_(list(iids)),
                                                               inference_metadata.c.field == field)))
            conn.execute(insert(inference_metadata), [{"inference_id": i, "field": field, "value": value}
                                                      for i in iids])
            n += len(iids)
    return n


def get_inference(store: Store, inference_id: str) -> Logged:
    with store.engine.connect() as conn:
        row = conn.execute(select(inferences).where(inferences.c.id == inference_id)).first()
        if row is None:
            raise NotFound(f"no inference {inference_id}")
        md = {f: v for _, f, v in conn.execute(select(inference_metadata).where(
            inference_metadata.c.inference_id == inference_id))}
    return _logged(row, md)
