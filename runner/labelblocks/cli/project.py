"""``labelblocks init``."""

from __future__ import annotations

from pathlib import Path

import click

from ..project import DATA_DIR, init_project
from ._util import print_json


@click.command("init")
@click.argument("directory", default=".", type=click.Path(file_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def init(directory: Path, as_json: bool) -> None:
    """Create a project in DIRECTORY (default: the current folder).

    The project is a SQLite database and a content-addressed blob folder in DIRECTORY/.labelblocks.

    \b
    Example:
      labelblocks init my-dataset
    """
    d = init_project(directory)
    if as_json:
        print_json({"project": str(d), "data": str(d / DATA_DIR)})
    else:
        click.echo(f"Created a labelblocks project in {d}")


def register(group: click.Group) -> None:
    group.add_command(init)
