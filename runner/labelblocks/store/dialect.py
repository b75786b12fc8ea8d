"""What differs between the store's two dialects, SQLite (the default) and PostgreSQL, in one
place: statements written per dialect, the JSON-list tricks that write many rows in one
statement, upserts, and ``group_concat``.

A statement is written with ``?`` placeholders; :func:`run` passes it as it is to SQLite and
with ``%s`` to PostgreSQL (psycopg). A statement that differs by more than its placeholders is
a :class:`Dialects` pair.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, CursorResult, Table
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.elements import ColumnElement
from sqlalchemy.sql.functions import FunctionElement
from sqlalchemy.types import Text


@dataclass(frozen=True)
class Dialects:
    """One statement in each dialect's words."""

    sqlite: str
    postgresql: str


def is_postgres(conn: Connection) -> bool:
    return conn.dialect.name == "postgresql"


def run(conn: Connection, statement: str | Dialects, params: Any = None) -> CursorResult[*tuple[Any, ...]]:
    """Execute a ``?``-placeholder statement (or the dialect's own of a pair)."""
    if isinstance(statement, Dialects):
        statement = statement.postgresql if is_postgres(conn) else statement.sqlite
    if is_postgres(conn):
        statement = statement.replace("%", "%%").replace("?", "%s")
    return conn.exec_driver_sql(statement, params) if params is not None else conn.exec_driver_sql(statement)


def upsert(conn: Connection, table: Table, rows: list[dict[str, Any]]) -> None:
    """Insert ``rows``, replacing those whose primary key exists."""
    if not rows:
        return
    keys = [c.name for c in table.primary_key.columns]
    if is_postgres(conn):
        pg = postgresql.insert(table)
        conn.execute(pg.on_conflict_do_update(index_elements=keys, set_={
            c: pg.excluded[c] for c in rows[0] if c not in keys}), rows)
    else:
        conn.execute(sqlite.insert(table).prefix_with("OR REPLACE"), rows)


class group_concat(FunctionElement[str]):
    """``group_concat(x[, separator])``: SQLite's own; PostgreSQL's ``string_agg``."""

    type = Text()
    name = "group_concat"
    inherit_cache = True


@compiles(group_concat)
def _group_concat_sqlite(element: group_concat, compiler: Any, **kw: Any) -> str:
    return f"group_concat({compiler.process(element.clauses, **kw)})"


@compiles(group_concat, "postgresql")
def _group_concat_postgres(element: group_concat, compiler: Any, **kw: Any) -> str:
    args = list(element.clauses)
    sep = compiler.process(args[1], **kw) if len(args) > 1 else "','"
    return f"string_agg(CAST({compiler.process(args[0], **kw)} AS TEXT), {sep})"


class json_ids(ColumnElement[Any]):
    """``(SELECT the integers of a JSON list)``: ``column IN json_ids(text)`` for any number of ids."""

    inherit_cache = True

    def __init__(self, payload: Any) -> None:
        self.payload = payload


@compiles(json_ids)
def _json_ids_sqlite(element: json_ids, compiler: Any, **kw: Any) -> str:
    return f"(SELECT value FROM json_each({compiler.process(element.payload, **kw)}))"


@compiles(json_ids, "postgresql")
def _json_ids_postgres(element: json_ids, compiler: Any, **kw: Any) -> str:
    return f"(SELECT CAST(json_array_elements_text(CAST({compiler.process(element.payload, **kw)} AS json)) AS BIGINT))"
