"""``labelblocks init`` and ``labelblocks gc``."""

from __future__ import annotations

from pathlib import Path

import click

from ._util import AppContext, pass_app, print_json


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
    from ..project import DATA_DIR, init_project

    d = init_project(directory)
    if as_json:
        print_json({"project": str(d), "data": str(d / DATA_DIR)})
    else:
        click.echo(f"Created a labelblocks project in {d}")


@click.command("gc")
@click.option("--dry-run", is_flag=True, help="List what would be removed; remove nothing.")
@click.option("--min-age", type=click.FloatRange(min=0), default=3600, show_default=True, metavar="SECONDS",
              help="Spare files younger than this (an upload in progress writes its files before it commits).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@pass_app
def gc_cmd(app: AppContext, dry_run: bool, min_age: float, as_json: bool) -> None:
    """Remove stored files no sample references.

    A process killed between writing a file and committing its sample (a power cut, a
    SIGKILL) leaves the file behind; nothing else does. Samples and their files are never
    touched.

    \b
    Examples:
      labelblocks gc --dry-run
      labelblocks gc --min-age 0
    """
    orphans = app.store.orphan_blobs(min_age)
    size = sum(n for _, n in orphans)
    if not dry_run:
        for path, _ in orphans:
            path.unlink(missing_ok=True)
    if as_json:
        print_json({"removed": 0 if dry_run else len(orphans), "wouldRemove": len(orphans) if dry_run else 0,
                    "bytes": size, "files": [str(p) for p, _ in orphans]})
        return
    verb = "Would remove" if dry_run else "Removed"
    click.echo(f"{verb} {len(orphans)} unreferenced file{'s' if len(orphans) != 1 else ''} ({size / 1e6:.1f} MB).")
    if dry_run:
        for path, n in orphans:
            click.echo(f"  {path} ({n} bytes)")


def register(group: click.Group) -> None:
    group.add_command(init)
    group.add_command(gc_cmd)
