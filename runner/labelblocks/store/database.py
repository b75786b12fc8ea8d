"""The project's database: opening it (SQLite with WAL, or a PostgreSQL server), migrating it on
open, and its transactions (one writer at a time) and read connections."""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Self

from sqlalchemy import (
    Connection,
    Engine,
    create_engine,
    event,
    insert,
)

from ..constants import BLOB_CACHE, BLOB_CONFIG, BLOB_DIR, DB_CONFIG, DB_NAME
from ..errors import InvalidInput, NotFound
from .blobs import BlobStore, RemoteBlobStore, open_blob_store
from .dialect import is_postgres
from .schema import MIGRATIONS, create_all, current_version, schema_migrations

_PG_WRITE_LOCK = "SELECT pg_advisory_xact_lock(7468001)"  # one writer at a time, as SQLite's BEGIN IMMEDIATE


def _set_sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.execute("PRAGMA cache_size=-65536")
    cur.close()


def _sqlite_begin(conn: Connection) -> None:
    # writers take the lock up front (BEGIN IMMEDIATE), so two writers never deadlock on an
    # upgrade from a read lock; readers use a deferred transaction and never block writers (WAL)
    if conn.get_execution_options().get("lb_write"):
        conn.exec_driver_sql("BEGIN IMMEDIATE")
    else:
        conn.exec_driver_sql("BEGIN")


def _writable(root: Path, db: Path) -> bool:
    """Whether this process can write the project's database and its folder (SQLite writes a
    journal beside the file)."""
    try:
        if os.statvfs(root).f_flag & os.ST_RDONLY:
            return False
    except (OSError, AttributeError):
        pass
    return os.access(db, os.W_OK) and os.access(root, os.W_OK)


def _read_url(config: Path) -> str:
    try:
        return str(json.loads(config.read_text(encoding="utf-8"))["url"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise InvalidInput(f"cannot read {config}: {e}") from None


def blob_store(root: Path) -> BlobStore | RemoteBlobStore:
    """The blob store of the project data folder ``root``: its ``blobs`` folder, or the
    location its ``blobs.json`` names (``labelblocks init --blobs URL``)."""
    config = root / BLOB_CONFIG
    if not config.exists():
        return BlobStore(root / BLOB_DIR)
    try:
        url = json.loads(config.read_text(encoding="utf-8"))["url"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise InvalidInput(f"cannot read {config}: {e}") from None
    return open_blob_store(str(url), root / BLOB_CACHE)



class Database:
    """The connection to a project's database and its blob store."""

    def __init__(self, root: Path, engine: Engine) -> None:
        self.root = root
        self.engine = engine
        self.blobs = blob_store(root)
        self._write_lock = threading.RLock()

    @classmethod
    def open(cls, root: Path | str, create: bool = False, url: str | None = None,
             password: str | None = None) -> Self:
        """Open the project data folder ``root`` (the ``.labelblocks`` folder), applying
        migrations. ``create`` makes the folder if it does not exist. The tables are in the
        SQLite file in the folder, or on the database server ``url`` (a PostgreSQL URL without
        its password; with ``create`` the folder remembers it), which ``password`` opens."""
        root = Path(root)
        if url is None and (root / DB_CONFIG).exists():
            url = _read_url(root / DB_CONFIG)
        if url is not None:
            return cls._open_server(root, url, create, password)
        db = root / DB_NAME
        if not db.exists() and not create:
            raise NotFound(f"no labelblocks database at {db}")
        if not create and not _writable(root, db):
            return cls._open_read_only(root, db)
        root.mkdir(parents=True, exist_ok=True)
        if create:
            blob_store(root).create_shards()
        engine = create_engine(f"sqlite:///{db}", future=True)
        event.listen(engine, "connect", _set_sqlite_pragmas)
        # take manual control of transactions so that BEGIN IMMEDIATE is used
        event.listen(engine, "connect", lambda c, r: setattr(c, "isolation_level", None))
        event.listen(engine, "begin", _sqlite_begin)
        store = cls(root, engine)
        store.migrate()
        return store

    @classmethod
    def _open_server(cls, root: Path, url: str, create: bool, password: str | None) -> Self:
        from sqlalchemy.engine import make_url
        from sqlalchemy.exc import ArgumentError

        try:
            parsed = make_url(url)
        except ArgumentError:
            raise InvalidInput(f"database URL {url!r}: expected postgresql+psycopg://USER@HOST:PORT/DATABASE") from None
        if parsed.password:
            raise InvalidInput("the database URL holds a password: leave it out, and give it in "
                               "LABELBLOCKS_DATABASE_PASSWORD (or `labelblocks secrets set LABELBLOCKS_DATABASE_PASSWORD`)")
        if parsed.get_backend_name() != "postgresql":
            raise InvalidInput(f"database URL {parsed.render_as_string()}: expected a PostgreSQL URL "
                               "(postgresql+psycopg://USER@HOST:PORT/DATABASE)")
        if parsed.drivername == "postgresql":
            parsed = parsed.set(drivername="postgresql+psycopg")
        if create:
            root.mkdir(parents=True, exist_ok=True)
            tmp = root / f".{DB_CONFIG}.{os.getpid()}"
            tmp.write_text(json.dumps({"url": parsed.render_as_string()}), encoding="utf-8")
            os.replace(tmp, root / DB_CONFIG)
            blob_store(root).create_shards()
        engine = create_engine(parsed.set(password=password) if password else parsed, pool_pre_ping=True, future=True)
        store = cls(root, engine)
        try:
            store.migrate()
        except Exception:
            engine.dispose()
            raise
        return store

    @classmethod
    def _open_read_only(cls, root: Path, db: Path) -> Self:
        """A project this process cannot write (a read-only mount, a shared folder): opened
        read-only, so that reading commands work and writing ones fail with one clear line
        (errors.storage_error). SQLite's WAL needs a writable folder even to read, so the file
        is opened immutable: nothing may write it meanwhile, which a read-only folder ensures."""
        from urllib.parse import quote

        engine = create_engine(f"sqlite:///file:{quote(str(db))}?mode=ro&immutable=1&uri=true", future=True)
        event.listen(engine, "connect", lambda c, r: setattr(c, "isolation_level", None))
        event.listen(engine, "begin", lambda conn: conn.exec_driver_sql("BEGIN"))
        store = cls(root, engine)
        with engine.connect() as conn:
            version = int(conn.exec_driver_sql("SELECT max(version) FROM schema_migrations").scalar() or 0)
        if version < MIGRATIONS[-1][0]:
            from ..errors import StorageError

            raise StorageError(f"the project at {root.parent} is read-only and was made by an older labelblocks: "
                               "open it once where it can be written, to upgrade it", 503)
        return store

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def migrate(self) -> int:
        """Apply pending migrations, each in its own transaction. Returns the schema version."""
        with self.transaction() as conn:
            version = current_version(conn)
            if version == 0 and is_postgres(conn):
                # a new PostgreSQL database starts at the latest schema (the steps before it
                # rebuilt SQLite files that PostgreSQL never had); later steps apply to both
                create_all(conn)
                now = time.time()
                conn.execute(insert(schema_migrations), [{"version": v, "applied_at": now} for v, _ in MIGRATIONS])
                return MIGRATIONS[-1][0]
        for v, fn in MIGRATIONS:
            if v <= version:
                continue
            with self.transaction() as conn:
                if current_version(conn) >= v:  # another process got there first
                    continue
                fn(conn)
                conn.execute(insert(schema_migrations).values(version=v, applied_at=time.time()))
            version = v
        return version

    @contextmanager
    def transaction(self) -> Iterator[Connection]:
        """A write transaction: committed when the block ends, rolled back on any error.

        Threads of one process queue on a lock first: SQLite's own wait for a busy database
        sleeps in growing steps, which under many concurrent writers (the HTTP API) costs far
        more than the writes. Other processes still wait through SQLite's busy timeout."""
        with self._write_lock, self.engine.connect().execution_options(lb_write=True) as conn, conn.begin():
            if is_postgres(conn):
                conn.exec_driver_sql(_PG_WRITE_LOCK)
            yield conn

    @contextmanager
    def _read(self) -> Iterator[Connection]:
        with self.engine.connect() as conn:
            yield conn
