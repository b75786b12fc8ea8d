"""``labelblocks init`` and ``labelblocks gc``."""

from __future__ import annotations

from pathlib import Path

import click

from ._util import AppContext, pass_app, print_json


@click.command("init")
@click.argument("directory", default=".", type=click.Path(file_okay=False, path_type=Path))
@click.option("--blobs", metavar="URL", help="Keep the media in this fsspec location (s3://bucket/prefix, gs://..., "
              "a shared folder) instead of DIRECTORY/.labelblocks/blobs.")
@click.option("--database", metavar="URL", envvar="LABELBLOCKS_DATABASE_URL",
              help="Keep the tables on this PostgreSQL server (postgresql+psycopg://USER@HOST:PORT/DB, no password: "
                   "give it in LABELBLOCKS_DATABASE_PASSWORD) instead of a SQLite file.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def init(directory: Path, blobs: str | None, database: str | None, as_json: bool) -> None:
    """Create a project in DIRECTORY (default: the current folder).

    The project is a SQLite database and a content-addressed blob folder in
    DIRECTORY/.labelblocks; with --blobs the media live in a bucket (credentials and the
    endpoint come from the environment, e.g. AWS_ACCESS_KEY_ID, AWS_ENDPOINT_URL), with
    --database the tables on a PostgreSQL server. The folder remembers both.

    \b
    Examples:
      labelblocks init my-dataset
      labelblocks init team-dataset --blobs s3://datasets/team \\
          --database postgresql+psycopg://labeler@db:5432/team
    """
    from ..project import DATA_DIR, init_project

    d = init_project(directory, blobs=blobs, database=database)
    if as_json:
        print_json({"project": str(d), "data": str(d / DATA_DIR), "blobs": blobs or str(d / DATA_DIR / "blobs")})
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
    size = sum(f.size for f in orphans)
    if not dry_run:
        for f in orphans:
            app.store.blobs.delete(f.location)
    if as_json:
        print_json({"removed": 0 if dry_run else len(orphans), "wouldRemove": len(orphans) if dry_run else 0,
                    "bytes": size, "files": [f.location for f in orphans]})
        return
    verb = "Would remove" if dry_run else "Removed"
    click.echo(f"{verb} {len(orphans)} unreferenced file{'s' if len(orphans) != 1 else ''} ({size / 1e6:.1f} MB).")
    if dry_run:
        for f in orphans:
            click.echo(f"  {f.location} ({f.size} bytes)")


def register(group: click.Group) -> None:
    group.add_command(init)
    group.add_command(gc_cmd)
