"""Learn blocks and cached features: every statement on the learn_blocks and features tables."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from sqlalchemy import and_, delete, insert, select

from ..errors import NotFound
from . import Store
from .dialect import run
from .packed import pack_ids, unpack_ids
from .schema import features, learn_blocks


@dataclass
class LearnRecord:
    id: int
    kind: str
    name: str
    created_at: float
    extractor: dict[str, Any]
    params: dict[str, Any]
    training: list[int]
    model: dict[str, Any]
    metadata: dict[str, Any]

    def summary(self) -> dict[str, Any]:
        return {"id": self.id, "kind": self.kind, "name": self.name, "created": self.created_at,
                "features": self.extractor.get("name"), "extractor": self.extractor, "params": self.params,
                "trainingSamples": len(self.training), "clusters": len(self.model.get("clusters", []))}


def save_learn(store: Store, kind: str, name: str, extractor: dict[str, Any], params: dict[str, Any],
               training: Sequence[int], model: dict[str, Any], metadata: dict[str, Any]) -> int:
    """Store a trained learn block in one transaction; returns its id."""
    with store.transaction() as conn:
        result = conn.execute(insert(learn_blocks).values(
            kind=kind, name=name, created_at=time.time(), extractor=json.dumps(extractor), params=json.dumps(params),
            training=pack_ids(training), model=json.dumps(model), metadata=json.dumps(metadata)))
        return int(result.inserted_primary_key[0])  # type: ignore[index]


def _record(row: Any) -> LearnRecord:
    return LearnRecord(int(row.id), row.kind, row.name, float(row.created_at), json.loads(row.extractor),
                       json.loads(row.params), unpack_ids(row.training), json.loads(row.model), json.loads(row.metadata))


def get_learn(store: Store, learn_id: int) -> LearnRecord:
    with store.engine.connect() as conn:
        row = conn.execute(select(learn_blocks).where(learn_blocks.c.id == learn_id)).first()
    if row is None:
        raise NotFound(f"no learn block {learn_id}: see `labelblocks learn list`")
    return _record(row)


def list_learn(store: Store) -> list[LearnRecord]:
    with store.engine.connect() as conn:
        return [_record(r) for r in conn.execute(select(learn_blocks).order_by(learn_blocks.c.id))]


def delete_learn(store: Store, learn_id: int) -> None:
    get_learn(store, learn_id)
    with store.transaction() as conn:
        conn.execute(delete(learn_blocks).where(learn_blocks.c.id == learn_id))


def cached_features(store: Store, key: str, hashes: Sequence[str]) -> dict[str, np.ndarray]:
    """{content hash: float32 [windows, dim]} of those of ``hashes`` with cached features."""
    out: dict[str, np.ndarray] = {}
    wanted = list(dict.fromkeys(hashes))
    with store.engine.connect() as conn:
        for start in range(0, len(wanted), 500):
            chunk = wanted[start : start + 500]
            sql = (f"SELECT content_hash, windows, dim, data FROM features WHERE extractor_key = ? "
                   f"AND content_hash IN ({', '.join('?' * len(chunk))})")
            for h, windows, dim, data in run(conn, sql, (key, *chunk)).cursor.fetchall():
                out[h] = np.frombuffer(data, dtype=np.float32).reshape(windows, dim)
    return out


def save_features(store: Store, key: str, computed: dict[str, np.ndarray]) -> None:
    """Cache ``computed`` ({content hash: [windows, dim]}) in one transaction."""
    if not computed:
        return
    with store.transaction() as conn:
        conn.execute(delete(features).where(and_(features.c.extractor_key == key,
                                                 features.c.content_hash.in_(list(computed)))))
        conn.execute(insert(features), [
            {"extractor_key": key, "content_hash": h, "windows": int(a.shape[0]), "dim": int(a.shape[1]),
             "data": np.ascontiguousarray(a, dtype=np.float32).tobytes()} for h, a in computed.items()])
