"""``labelblocks export``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from ..constants import EXPORT_FORMATS
from ._util import AppContext, build_filter, filter_options, pass_app, print_json, progress


@click.command("export")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@click.option("--format", "fmt", type=click.Choice(EXPORT_FORMATS), default="info", show_default=True,
              help="info: the files plus the protocol's info.labels; coco: images/ and annotations.json; yolo: "
                   "images/ and labels/ per split, data.yaml (images only, for both).")
@filter_options(include_disabled_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@pass_app
def export_cmd(app: AppContext, directory: Path, fmt: str, as_json: bool, **kw: Any) -> None:
    """Export samples (all, or those matching the filters) into a new folder.

    `labelblocks upload --info-file DIR/info.labels` (or `--coco DIR/annotations.json`, or
    `--yolo DIR/data.yaml`) reads the export back into an identical dataset: what COCO and
    YOLO cannot hold (labels, metadata, categories) travels in their extra fields.

    \b
    Examples:
      labelblocks export ../paris-export --where site=Paris
      labelblocks export ../detector-data --format yolo --has reviewed
    """
    from ..export import export_info
    from ..formats import export_coco, export_yolo

    f = build_filter(kw)
    store = app.store
    write = {"info": export_info, "coco": export_coco, "yolo": export_yolo}[fmt]
    total = store.count(f.replace(data_type="image") if fmt != "info" else f)
    # what the format cannot hold is said, never dropped silently
    left = [] if fmt == "info" else store.select_ids(f.replace(data_type="audio"))
    with progress(total, "Exporting", enabled=not as_json) as bar:
        n = write(store, directory, f, on_progress=bar)
    why = f"{fmt.upper()} holds images only"
    if as_json:
        out: dict[str, Any] = {"exported": n, "directory": str(directory.resolve()), "format": fmt}
        if left:
            out["notExported"] = {"count": len(left), "reason": why, "sampleIds": left}
        print_json(out)
    else:
        click.echo(f"Exported {n} sample{'s' if n != 1 else ''} to {directory}")
        if left:
            click.echo(f"{len(left)} audio sample{'s' if len(left) != 1 else ''} not exported: {why} "
                       f"(`--format info` exports every sample).")


def register(group: click.Group) -> None:
    group.add_command(export_cmd)
