"""Registered external blocks: every statement on the external_blocks table."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, insert, select

from ..errors import InvalidInput
from . import Store
from .schema import external_blocks


@dataclass(frozen=True)
class ExternalBlockRow:
    """A registered external block as stored: its parameters.json (a dict), how it runs."""

    name: str
    kind: str  # command | image
    directory: str | None
    command: list[str]
    image: str | None
    parameters: dict[str, Any]
    timeout: float | None


def save_external_block(store: Store, row: ExternalBlockRow, replace: bool = False) -> None:
    """Register ``row``; one of that name already registered is refused unless ``replace``."""
    with store.transaction() as conn:
        exists = conn.execute(select(external_blocks.c.name).where(external_blocks.c.name == row.name)).first()
        if exists and not replace:
            raise InvalidInput(f"an external block named {row.name!r} is registered: pass --replace, or --name")
        if exists:
            conn.execute(delete(external_blocks).where(external_blocks.c.name == row.name))
        conn.execute(insert(external_blocks).values(
            name=row.name, kind=row.kind, directory=row.directory, command=json.dumps(row.command), image=row.image,
            parameters=json.dumps(row.parameters), timeout=row.timeout, created_at=time.time()))


def delete_external_block(store: Store, name: str) -> bool:
    """Unregister ``name``; False when there was none."""
    with store.transaction() as conn:
        return bool(conn.execute(delete(external_blocks).where(external_blocks.c.name == name)).rowcount)


def list_external_blocks(store: Store) -> Sequence[ExternalBlockRow]:
    """Every registered external block, by name."""
    with store.engine.connect() as conn:
        rows = conn.execute(select(external_blocks).order_by(external_blocks.c.name)).all()
    return [ExternalBlockRow(r.name, r.kind, r.directory, json.loads(r.command or "[]"), r.image,
                             json.loads(r.parameters), r.timeout) for r in rows]
