"""Saved actions: every statement on the actions table. Definitions are stored as the
action's JSON text; :mod:`labelblocks.actions` validates and parses them."""

from __future__ import annotations

import time

from sqlalchemy import delete, insert, select, update

from ..errors import InvalidInput
from . import Store
from .schema import actions as actions_table


def save_definition(store: Store, name: str, definition: str, replace: bool = False) -> None:
    """Save the action ``name``'s JSON definition; an existing one of that name is refused
    unless ``replace``."""
    now = time.time()
    with store.transaction() as conn:
        exists = conn.execute(select(actions_table.c.name).where(actions_table.c.name == name)).first()
        if exists and not replace:
            raise InvalidInput(f"an action named {name!r} exists: delete it first or pass --replace")
        if exists:
            conn.execute(update(actions_table).where(actions_table.c.name == name)
                         .values(definition=definition, updated_at=now))
        else:
            conn.execute(insert(actions_table).values(name=name, definition=definition, created_at=now,
                                                      updated_at=now))


def get_definition(store: Store, name: str) -> str | None:
    """The action's JSON definition, or None when there is none of that name."""
    with store.engine.connect() as conn:
        row = conn.execute(select(actions_table.c.definition).where(actions_table.c.name == name)).first()
    return None if row is None else str(row[0])


def list_definitions(store: Store) -> list[str]:
    """Every saved action's JSON definition, by name."""
    with store.engine.connect() as conn:
        return [str(r[0]) for r in conn.execute(select(actions_table.c.definition).order_by(actions_table.c.name))]


def delete_definition(store: Store, name: str) -> bool:
    """Delete the action ``name``; False when there was none."""
    with store.transaction() as conn:
        return bool(conn.execute(delete(actions_table).where(actions_table.c.name == name)).rowcount)
