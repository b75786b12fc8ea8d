"""Projects: a folder holding ``.labelblocks/`` (the database and the blob folder)."""

from __future__ import annotations

import os
from pathlib import Path

from .errors import InvalidInput, ProjectNotFound
from .store import DB_NAME, Store

DATA_DIR = ".labelblocks"
ENV_VAR = "LABELBLOCKS_PROJECT"


def init_project(directory: Path | str) -> Path:
    """Create a project in ``directory`` (created if missing). Returns the project folder.
    Initialising an existing project is an error, so nothing is ever overwritten."""
    d = Path(directory).resolve()
    if d.exists() and not d.is_dir():
        raise InvalidInput(f"{d} exists and is not a folder")
    data = d / DATA_DIR
    if (data / DB_NAME).exists():
        raise InvalidInput(f"{d} is already a labelblocks project")
    with Store.open(data, create=True):
        pass
    return d


def find_project(explicit: str | Path | None = None, start: Path | None = None) -> Path:
    """The project folder: ``explicit`` (``--project``), else ``$LABELBLOCKS_PROJECT``, else
    the current directory or the nearest parent holding a project."""
    chosen = explicit or os.environ.get(ENV_VAR)
    if chosen:
        d = Path(chosen).expanduser().resolve()
        if not (d / DATA_DIR / DB_NAME).exists():
            raise ProjectNotFound(
                f"{d} is not a labelblocks project: run `labelblocks init {chosen}` to create one"
            )
        return d
    here = (start or Path.cwd()).resolve()
    for d in (here, *here.parents):
        if (d / DATA_DIR / DB_NAME).exists():
            return d
    raise ProjectNotFound(
        f"no labelblocks project in {here} or any parent folder: run `labelblocks init` "
        f"here, or pass --project DIR (or set {ENV_VAR})"
    )


def open_store(project_dir: Path) -> Store:
    return Store.open(project_dir / DATA_DIR)
