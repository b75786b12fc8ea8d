"""Project API keys for the HTTP API: every statement on the api_keys table.

A key is shown once, when it is created; the project keeps only its SHA-256 hash and its
first characters (to tell keys apart in listings). Keys start with ``ei_``, as the protocol's
keys do (its Node.js bindings refuse any other key before sending a request).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from sqlalchemy import insert, select, update

from ..errors import InvalidInput, NotFound
from . import Store
from .schema import api_keys

KEY_PREFIX = "ei_"
_SHOWN = 10  # characters of a key kept to tell keys apart
LAST_USED_EVERY = 60.0  # seconds: a key's last use is recorded at most this often


def new_key() -> str:
    return KEY_PREFIX + secrets.token_hex(32)


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


@dataclass
class ApiKey:
    id: int
    name: str
    prefix: str
    created_at: float
    revoked_at: float | None
    last_used_at: float | None

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "prefix": self.prefix, "created": self.created_at,
                "revoked": self.revoked_at, "lastUsed": self.last_used_at}


def create_key(store: Store, name: str = "") -> tuple[ApiKey, str]:
    """Create a key; returns its record and the key itself (not stored anywhere)."""
    key = new_key()
    now = time.time()
    name = name.strip() or f"key {now:.0f}"
    with store.transaction() as conn:
        kid = conn.execute(insert(api_keys).values(name=name, key_hash=hash_key(key), prefix=key[:_SHOWN],
                                                   created_at=now).returning(api_keys.c.id)).scalar_one()
    return ApiKey(int(kid), name, key[:_SHOWN], now, None, None), key


def list_keys(store: Store) -> list[ApiKey]:
    with store.engine.connect() as conn:
        rows = conn.execute(select(api_keys).order_by(api_keys.c.id)).all()
    return [ApiKey(r.id, r.name, r.prefix, r.created_at, r.revoked_at, r.last_used_at) for r in rows]


def revoke_key(store: Store, ident: str) -> ApiKey:
    """Revoke a key by its id, its name or its shown prefix."""
    k = pick_key(list_keys(store), ident, "API key", "`labelblocks keys list`")
    if k.revoked_at is None:
        k.revoked_at = time.time()
        with store.transaction() as conn:
            conn.execute(update(api_keys).where(api_keys.c.id == k.id).values(revoked_at=k.revoked_at))
    return k


class _Named(Protocol):
    @property
    def id(self) -> int: ...

    @property
    def name(self) -> str: ...

    @property
    def prefix(self) -> str: ...


K = TypeVar("K", bound=_Named)


def pick_key(keys: Sequence[K], ident: str, what: str, listing: str) -> K:
    """The one key of ``keys`` that ``ident`` names by id, name or shown prefix."""
    matches = [k for k in keys if ident in (str(k.id), k.name, k.prefix)]
    if not matches:
        raise NotFound(f"no {what} {ident!r}: see {listing}")
    if len(matches) > 1:
        raise InvalidInput(f"{ident!r} names {len(matches)} keys: revoke by id ({', '.join(str(k.id) for k in matches)})")
    return matches[0]


def verify_key(store: Store, key: str | None) -> ApiKey | None:
    """The active key record matching ``key``, or None (unknown, revoked or malformed)."""
    if not key or not key.startswith(KEY_PREFIX) or len(key) > 200:
        return None
    h = hash_key(key)
    with store.engine.connect() as conn:
        row = conn.execute(select(api_keys).where(api_keys.c.key_hash == h)).first()
    if row is None or row.revoked_at is not None or not hmac.compare_digest(row.key_hash, h):
        return None
    return ApiKey(row.id, row.name, row.prefix, row.created_at, row.revoked_at, row.last_used_at)


def touch_key(store: Store, key_id: int, now: float) -> bool:
    """Record that key ``key_id`` was used at ``now``, unless a use within LAST_USED_EVERY
    seconds is recorded already (several server processes write it once). True if written."""
    stale = now - LAST_USED_EVERY
    with store.transaction() as conn:
        done = conn.execute(update(api_keys).where(api_keys.c.id == key_id)
                            .where((api_keys.c.last_used_at.is_(None)) | (api_keys.c.last_used_at <= stale))
                            .values(last_used_at=now))
    return bool(done.rowcount)
