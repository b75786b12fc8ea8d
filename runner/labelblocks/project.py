"""Projects: a folder holding ``.labelblocks/`` (the database and the blob folder)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

from .constants import BLOB_CACHE, BLOB_CONFIG, DB_CONFIG, DB_NAME
from .errors import InvalidInput, ProjectNotFound
from .secrets import get_secret

if TYPE_CHECKING:
    from .store import Store

DATA_DIR = ".labelblocks"
ENV_VAR = "LABELBLOCKS_PROJECT"
DATABASE_ENV = "LABELBLOCKS_DATABASE_URL"  # where `init` puts a new project's tables (a PostgreSQL URL)
PASSWORD_SECRET = "LABELBLOCKS_DATABASE_PASSWORD"


def init_project(directory: Path | str, blobs: str | None = None, database: str | None = None) -> Path:
    """Create a project in ``directory`` (created if missing), its media in ``blobs`` (an
    fsspec URL such as ``s3://bucket/prefix``) and its tables on the PostgreSQL server
    ``database`` (default: ``$LABELBLOCKS_DATABASE_URL``, else a SQLite file in the folder) when
    given. Returns the project folder. Initialising an existing project is an error, so nothing
    is ever overwritten."""
    d = Path(directory).resolve()
    if d.exists() and not d.is_dir():
        raise InvalidInput(f"{d} exists and is not a folder")
    data = d / DATA_DIR
    if is_project_data(data):
        raise InvalidInput(f"{d} is already a labelblocks project")
    from .store import Store
    from .store.blobs import open_blob_store

    database = database or os.environ.get(DATABASE_ENV) or None
    if blobs:
        if "@" in blobs.split("://", 1)[-1].split("/", 1)[0]:
            raise InvalidInput("--blobs: put credentials in the environment (AWS_ACCESS_KEY_ID, ...), not in the URL")
        data.mkdir(parents=True, exist_ok=True)
        open_blob_store(blobs, data / BLOB_CACHE)  # a clear error now for an unknown protocol or a missing driver
        (data / BLOB_CONFIG).write_text(json.dumps({"url": blobs}), encoding="utf-8")
    with Store.open(data, create=True, url=database, password=database_password()):
        pass
    return d


def is_project_data(data: Path) -> bool:
    """Whether ``data`` is a project's data folder (a SQLite file, or a database server's URL)."""
    return (data / DB_NAME).exists() or (data / DB_CONFIG).exists()


def database_password() -> str | None:
    """The password of a project's database server: ``$LABELBLOCKS_DATABASE_PASSWORD``, else the
    secret of that name (``labelblocks secrets set LABELBLOCKS_DATABASE_PASSWORD``); libpq's own
    PGPASSWORD and ~/.pgpass work too."""
    return get_secret(PASSWORD_SECRET)


def find_project(explicit: str | Path | None = None, start: Path | None = None) -> Path:
    """The project folder: ``explicit`` (``--project``), else ``$LABELBLOCKS_PROJECT``, else
    the current directory or the nearest parent holding a project."""
    chosen = explicit or os.environ.get(ENV_VAR)
    if chosen:
        d = Path(chosen).expanduser().resolve()
        if not is_project_data(d / DATA_DIR):
            raise ProjectNotFound(
                f"{d} is not a labelblocks project: run `labelblocks init {chosen}` to create one"
            )
        return d
    here = (start or Path.cwd()).resolve()
    for d in (here, *here.parents):
        if is_project_data(d / DATA_DIR):
            return d
    raise ProjectNotFound(
        f"no labelblocks project in {here} or any parent folder: run `labelblocks init` "
        f"here, or pass --project DIR (or set {ENV_VAR})"
    )


def open_store(project_dir: Path) -> Store:
    from .store import Store

    return Store.open(project_dir / DATA_DIR, password=database_password() if (
        project_dir / DATA_DIR / DB_CONFIG).exists() else None)
