"""Organizations: every statement on the org_* tables.

An organization's folder uses the first seven (its identity, members' keys, blocks, their
immutable versions, the blocks' encrypted secrets, uploads under way, attached projects); a
project uses the last two (the organizations it is attached to and its verified copies of
the block versions it ran). Secret values reach this module only encrypted.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.exc import IntegrityError

from ..errors import InvalidInput, NotFound
from . import Store
from .keys import KEY_PREFIX, hash_key, new_key, pick_key
from .org_schema import (
    org_attachments,
    org_block_copies,
    org_block_versions,
    org_blocks,
    org_info,
    org_keys,
    org_links,
    org_secrets,
    org_uploads,
)

ROLES = ("admin", "member")
_SHOWN = 10


# --- the organization itself -------------------------------------------------------------------


@dataclass(frozen=True)
class OrgInfo:
    id: int
    name: str
    created_at: float


def init_org_info(store: Store, org_id: int, name: str) -> OrgInfo:
    now = time.time()
    with store.transaction() as conn:
        if conn.execute(select(org_info.c.id)).first() is not None:
            raise InvalidInput(f"{store.root.parent} is already an organization")
        conn.execute(insert(org_info).values(id=org_id, name=name, created_at=now))
    return OrgInfo(org_id, name, now)


def get_org_info(store: Store) -> OrgInfo | None:
    with store.engine.connect() as conn:
        r = conn.execute(select(org_info)).first()
    return OrgInfo(r.id, r.name, r.created_at) if r else None


# --- members' keys -----------------------------------------------------------------------------


@dataclass(frozen=True)
class OrgKey:
    id: int
    name: str
    role: str
    prefix: str
    created_at: float
    revoked_at: float | None

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "role": self.role, "prefix": self.prefix,
                "created": self.created_at, "revoked": self.revoked_at}


def _key(r: Any) -> OrgKey:
    return OrgKey(r.id, r.name, r.role, r.prefix, r.created_at, r.revoked_at)


def create_org_key(store: Store, name: str, role: str) -> tuple[OrgKey, str]:
    """A new member key; returns its record and the key itself (only its hash is kept)."""
    if role not in ROLES:
        raise InvalidInput(f"role {role!r}: expected one of {', '.join(ROLES)}")
    key = new_key()
    now = time.time()
    name = name.strip() or f"key {now:.0f}"
    with store.transaction() as conn:
        kid = conn.execute(insert(org_keys).values(name=name, role=role, key_hash=hash_key(key), prefix=key[:_SHOWN],
                                                   created_at=now).returning(org_keys.c.id)).scalar_one()
    return OrgKey(int(kid), name, role, key[:_SHOWN], now, None), key


def list_org_keys(store: Store) -> list[OrgKey]:
    with store.engine.connect() as conn:
        return [_key(r) for r in conn.execute(select(org_keys).order_by(org_keys.c.id)).all()]


def revoke_org_key(store: Store, ident: str) -> OrgKey:
    """Revoke a key by its id, name or shown prefix."""
    k = pick_key(list_org_keys(store), ident, "organization key", "`labelblocks org keys list`")
    if k.revoked_at is None:
        with store.transaction() as conn:
            conn.execute(update(org_keys).where(org_keys.c.id == k.id).values(revoked_at=time.time()))
    return next(x for x in list_org_keys(store) if x.id == k.id)


def verify_org_key(store: Store, key: str | None) -> OrgKey | None:
    """The active key matching ``key``, or None."""
    if not key or not key.startswith(KEY_PREFIX) or len(key) > 200:
        return None
    with store.engine.connect() as conn:
        r = conn.execute(select(org_keys).where(org_keys.c.key_hash == hash_key(key))).first()
    return _key(r) if r is not None and r.revoked_at is None else None


# --- blocks and versions -----------------------------------------------------------------------


@dataclass(frozen=True)
class OrgVersion:
    block_id: int
    version: int
    sha256: str | None
    size: int
    parameters: dict[str, Any]
    command: list[str]
    image: str | None
    build_log: str
    pushed_by: str
    created_at: float


@dataclass(frozen=True)
class OrgBlock:
    id: int
    name: str
    description: str
    operates_on: list[str]
    created_at: float
    updated_at: float
    versions: list[OrgVersion] = field(default_factory=list)

    @property
    def latest(self) -> OrgVersion | None:
        return self.versions[-1] if self.versions else None


def _version(r: Any) -> OrgVersion:
    return OrgVersion(r.block_id, r.version, r.sha256, r.size, json.loads(r.parameters), json.loads(r.command),
                      r.image, r.build_log, r.pushed_by, r.created_at)


def list_org_blocks(store: Store, block_id: int | None = None) -> list[OrgBlock]:
    """The organization's blocks by name (or only ``block_id``), each with its versions in order."""
    with store.engine.connect() as conn:
        q = select(org_blocks).order_by(org_blocks.c.name)
        v = select(org_block_versions).order_by(org_block_versions.c.block_id, org_block_versions.c.version)
        if block_id is not None:
            q, v = q.where(org_blocks.c.id == block_id), v.where(org_block_versions.c.block_id == block_id)
        blocks = conn.execute(q).all()
        versions = [_version(r) for r in conn.execute(v).all()]
    by_block: dict[int, list[OrgVersion]] = {}
    for ver in versions:
        by_block.setdefault(ver.block_id, []).append(ver)
    return [OrgBlock(b.id, b.name, b.description, json.loads(b.operates_on), b.created_at, b.updated_at,
                     by_block.get(b.id, [])) for b in blocks]


def get_org_block(store: Store, ident: int | str) -> OrgBlock:
    """A block by id or name."""
    with store.engine.connect() as conn:
        col = org_blocks.c.id if isinstance(ident, int) else org_blocks.c.name
        bid = conn.execute(select(org_blocks.c.id).where(col == ident)).scalar()
    if bid is None:
        raise NotFound(f"the organization has no block {ident!r}")
    return list_org_blocks(store, int(bid))[0]


def add_org_version(store: Store, name: str, description: str, operates_on: list[str], *, block_id: int | None,
                    sha256: str | None, size: int, parameters: dict[str, Any], command: list[str],
                    image: str | None, build_log: str, pushed_by: str) -> OrgVersion:
    """Record the next version of the block ``name`` (made when it does not exist; when
    ``block_id`` is given it must be that block). Versions are never changed afterwards."""
    now = time.time()
    with store.transaction() as conn:
        row = conn.execute(select(org_blocks.c.id, org_blocks.c.name).where(
            org_blocks.c.id == block_id if block_id is not None else org_blocks.c.name == name)).first()
        if block_id is not None and row is None:
            raise NotFound(f"the organization has no block with id {block_id} (was it removed?): "
                           "delete .labelblocks-block.json to push the folder as a new block")
        if row is None:
            bid = conn.execute(insert(org_blocks).values(name=name, description=description,
                                                         operates_on=json.dumps(operates_on), created_at=now,
                                                         updated_at=now).returning(org_blocks.c.id)).scalar_one()
        else:
            bid = row.id
            conn.execute(update(org_blocks).where(org_blocks.c.id == bid).values(
                description=description, operates_on=json.dumps(operates_on), updated_at=now))
        last = conn.execute(select(func.max(org_block_versions.c.version))
                            .where(org_block_versions.c.block_id == bid)).scalar()
        if sha256 is not None and last is not None:
            same = conn.execute(select(org_block_versions.c.version).where(
                org_block_versions.c.block_id == bid, org_block_versions.c.sha256 == sha256)).scalar()
            if same is not None:
                raise InvalidInput(f"version {same} of block {name!r} already holds exactly this content: "
                                   "change something before pushing again")
        version = int(last or 0) + 1
        values = dict(block_id=bid, version=version, sha256=sha256, size=size, parameters=json.dumps(parameters),
                      command=json.dumps(command), image=image, build_log=build_log, pushed_by=pushed_by,
                      created_at=now)
        try:
            conn.execute(insert(org_block_versions).values(**values))
        except IntegrityError:
            raise InvalidInput(f"version {version} of block {name!r} was pushed meanwhile: push again") from None
    return OrgVersion(bid, version, sha256, size, parameters, list(command), image, build_log, pushed_by, now)


def delete_org_block(store: Store, block_id: int) -> bool:
    """Remove a block with its versions and secrets; False when there was none."""
    with store.transaction() as conn:
        for t in (org_secrets, org_block_versions):
            conn.execute(delete(t).where(t.c.block_id == block_id))
        return bool(conn.execute(delete(org_blocks).where(org_blocks.c.id == block_id)).rowcount)


def used_archives(store: Store) -> set[str]:
    """The sha256 of every archive a version refers to."""
    with store.engine.connect() as conn:
        return {r[0] for r in conn.execute(select(org_block_versions.c.sha256).distinct()) if r[0]}


# --- secrets (encrypted before they arrive here) -----------------------------------------------


def set_org_secret(store: Store, block_id: int, key: str, token: str) -> None:
    with store.transaction() as conn:
        conn.execute(delete(org_secrets).where(org_secrets.c.block_id == block_id, org_secrets.c.key == key))
        conn.execute(insert(org_secrets).values(block_id=block_id, key=key, token=token, updated_at=time.time()))


def org_secret_tokens(store: Store, block_id: int) -> dict[str, str]:
    """The block's secrets: name → encrypted value."""
    with store.engine.connect() as conn:
        rows = conn.execute(select(org_secrets.c.key, org_secrets.c.token)
                            .where(org_secrets.c.block_id == block_id).order_by(org_secrets.c.key)).all()
    return {r.key: r.token for r in rows}


# --- uploads under way -------------------------------------------------------------------------


@dataclass(frozen=True)
class OrgUpload:
    id: str
    block_name: str
    sha256: str
    size: int
    key_id: int
    created_at: float


def create_upload(store: Store, upload_id: str, block_name: str, sha256: str, size: int, key_id: int) -> OrgUpload:
    now = time.time()
    with store.transaction() as conn:
        conn.execute(insert(org_uploads).values(id=upload_id, block_name=block_name, sha256=sha256, size=size,
                                                key_id=key_id, created_at=now))
    return OrgUpload(upload_id, block_name, sha256, size, key_id, now)


def get_upload(store: Store, upload_id: str) -> OrgUpload:
    with store.engine.connect() as conn:
        r = conn.execute(select(org_uploads).where(org_uploads.c.id == upload_id)).first()
    if r is None:
        raise NotFound(f"no upload {upload_id!r} (finished, abandoned or never started): start the push again")
    return OrgUpload(r.id, r.block_name, r.sha256, r.size, r.key_id, r.created_at)


def delete_upload(store: Store, upload_id: str) -> None:
    with store.transaction() as conn:
        conn.execute(delete(org_uploads).where(org_uploads.c.id == upload_id))


def stale_uploads(store: Store, before: float) -> list[str]:
    with store.engine.connect() as conn:
        return [r[0] for r in conn.execute(select(org_uploads.c.id).where(org_uploads.c.created_at < before))]


# --- attached projects (organization side) -----------------------------------------------------


def add_attachment(store: Store, project_name: str, key_id: int, token: str) -> int:
    with store.transaction() as conn:
        return int(conn.execute(insert(org_attachments).values(
            project_name=project_name, key_id=key_id, token=token, created_at=time.time())
            .returning(org_attachments.c.id)).scalar_one())


def attachment_token(store: Store, attachment_id: int) -> str | None:
    with store.engine.connect() as conn:
        return conn.execute(select(org_attachments.c.token).where(org_attachments.c.id == attachment_id)).scalar()


# --- a project's side --------------------------------------------------------------------------


@dataclass(frozen=True)
class OrgLink:
    org_id: int
    name: str
    url: str
    attachment_id: int
    catalogue: list[dict[str, Any]]
    attached_at: float
    refreshed_at: float


def save_link(store: Store, link: OrgLink) -> None:
    with store.transaction() as conn:
        conn.execute(delete(org_links).where(org_links.c.org_id == link.org_id))
        conn.execute(insert(org_links).values(org_id=link.org_id, name=link.name, url=link.url,
                                              attachment_id=link.attachment_id, catalogue=json.dumps(link.catalogue),
                                              attached_at=link.attached_at, refreshed_at=link.refreshed_at))


def list_links(store: Store) -> list[OrgLink]:
    with store.engine.connect() as conn:
        rows = conn.execute(select(org_links).order_by(org_links.c.org_id)).all()
    return [OrgLink(r.org_id, r.name, r.url, r.attachment_id, json.loads(r.catalogue), r.attached_at, r.refreshed_at)
            for r in rows]


def update_catalogue(store: Store, org_id: int, catalogue: list[dict[str, Any]]) -> None:
    with store.transaction() as conn:
        conn.execute(update(org_links).where(org_links.c.org_id == org_id)
                     .values(catalogue=json.dumps(catalogue), refreshed_at=time.time()))


def remove_link(store: Store, org_id: int) -> bool:
    with store.transaction() as conn:
        return bool(conn.execute(delete(org_links).where(org_links.c.org_id == org_id)).rowcount)


@dataclass(frozen=True)
class BlockCopy:
    org_id: int
    block_id: int
    version: int
    name: str
    sha256: str
    path: str
    sealed_env: str | None


def save_copy(store: Store, copy: BlockCopy) -> None:
    with store.transaction() as conn:
        conn.execute(delete(org_block_copies).where(
            org_block_copies.c.org_id == copy.org_id, org_block_copies.c.block_id == copy.block_id,
            org_block_copies.c.version == copy.version))
        conn.execute(insert(org_block_copies).values(
            org_id=copy.org_id, block_id=copy.block_id, version=copy.version, name=copy.name, sha256=copy.sha256,
            path=copy.path, sealed_env=copy.sealed_env, fetched_at=time.time()))


def get_copy(store: Store, org_id: int, block_id: int, version: int) -> BlockCopy | None:
    with store.engine.connect() as conn:
        r = conn.execute(select(org_block_copies).where(
            org_block_copies.c.org_id == org_id, org_block_copies.c.block_id == block_id,
            org_block_copies.c.version == version)).first()
    return BlockCopy(r.org_id, r.block_id, r.version, r.name, r.sha256, r.path, r.sealed_env) if r else None


def set_sealed_env(store: Store, org_id: int, block_id: int, version: int, sealed: str | None) -> None:
    with store.transaction() as conn:
        conn.execute(update(org_block_copies).where(
            org_block_copies.c.org_id == org_id, org_block_copies.c.block_id == block_id,
            org_block_copies.c.version == version).values(sealed_env=sealed))
