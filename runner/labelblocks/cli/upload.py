"""``labelblocks upload``."""

from __future__ import annotations

import itertools
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from ..constants import MAX_IMAGE_PIXELS, UPLOAD_CATEGORIES
from ..errors import UsageError
from ._util import AppContext, parse_key_values, pass_app, print_json, progress

if TYPE_CHECKING:
    from ..uploads import Outcome


@click.command("upload")
@click.argument("paths", nargs=-1, type=click.Path(exists=True, path_type=Path))
@click.option("--category", type=click.Choice(UPLOAD_CATEGORIES), default=None,
              help="training, validation, testing, or split (80/20 training/testing from the content hash). "
                   "Default: training, or what the info file says.")
@click.option("--label", help="Label every file with this (default: inferred from the file name).")
@click.option("--no-label", is_flag=True, help="Upload without labels.")
@click.option("--metadata", "metadata", multiple=True, metavar="KEY=VALUE", help="Metadata for every file (repeatable).")
@click.option("--info-file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="The protocol's info.labels: files (relative to it) with labels, metadata and boxes.")
@click.option("--coco", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="A COCO annotation file: its images (relative to it, or --images) with their boxes.")
@click.option("--images", "images_dir", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Where --coco's image paths start (default: the COCO file's folder).")
@click.option("--yolo", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="A YOLO dataset's data.yaml: each split's images with their labels/ boxes.")
@click.option("--disallow-duplicates", is_flag=True, help="Skip files whose content is already in the project.")
@click.option("--allow-duplicates", is_flag=True,
              help="Add a file even when one of the same content and name is in the project already "
                   "(by default it is skipped, so that repeating an upload adds nothing).")
@click.option("--max-pixels", type=click.IntRange(min=1), default=MAX_IMAGE_PIXELS, show_default=True,
              help="Refuse images larger than this many pixels (width x height).")
@click.option("--update-existing", is_flag=True,
              help="Stage what the info file (or COCO/YOLO file) says about samples already in the project "
                   "(labels, boxes, metadata that differ) as a job to review and apply, like an action's preview.")
@click.option("--json", "as_json", is_flag=True, help="Print the per-file results as JSON.")
@pass_app
def upload_cmd(app: AppContext, paths: tuple[Path, ...], category: str | None, label: str | None, no_label: bool,
               metadata: tuple[str, ...], info_file: Path | None, coco: Path | None, images_dir: Path | None,
               yolo: Path | None, disallow_duplicates: bool, allow_duplicates: bool, max_pixels: int,
               update_existing: bool, as_json: bool) -> None:
    """Upload images (PNG, JPEG, ...) and audio (WAV, FLAC, OGG) from files and folders.

    Folders are walked. Labels come from --label, else from the file name's leading
    letters, digits, spaces, '_' and '-' (dog.01.jpg is 'dog'). bounding_boxes.labels and
    structured_labels.labels beside the files are honoured. A bad file is rejected alone,
    with its reason; the command then exits with status 1.

    \b
    Examples:
      labelblocks upload photos/ --metadata site=Paris --category split
      labelblocks upload --info-file dataset/info.labels
      labelblocks upload --info-file dataset/info.labels --update-existing
      labelblocks upload --coco coco/annotations.json --images coco/val2017
      labelblocks upload --yolo yolo-dataset/data.yaml
      labelblocks upload clips/*.wav --label noise --json
    """
    from ..collect import items_from_info_file, items_from_paths
    from ..uploads import INFER, upload

    if not paths and info_file is None and coco is None and yolo is None:
        raise UsageError("nothing to upload: give files or folders, or --info-file, --coco or --yolo FILE")
    if images_dir is not None and coco is None:
        raise UsageError("--images goes with --coco")
    if label is not None and no_label:
        raise UsageError("--label and --no-label cannot be used together")
    md = parse_key_values(metadata, "--metadata")
    store = app.store
    lab: Any = None if no_label else (label if label is not None else INFER)
    sources: list[Any] = []
    if info_file is not None:
        sources.append(items_from_info_file(info_file, md, category))
    if coco is not None:
        from ..formats import items_from_coco

        coco_items, notes = items_from_coco(coco, images_dir, md, category)
        sources.append(coco_items)
        for note in notes:
            click.echo(f"note: {note}", err=True)
    if yolo is not None:
        from ..formats import items_from_yolo

        sources.append(items_from_yolo(yolo, md, category))
    if paths:
        sources.append(items_from_paths(paths, category or "training", lab, md))
    items = list(itertools.chain.from_iterable(sources))
    if allow_duplicates and disallow_duplicates:
        raise UsageError("--allow-duplicates and --disallow-duplicates cannot be used together")
    if update_existing and info_file is None and coco is None and yolo is None:
        raise UsageError("--update-existing goes with --info-file, --coco or --yolo (a file that describes samples)")
    try:
        with progress(len(items), "Uploading", enabled=not as_json) as bar:
            report = upload(store, items, disallow_duplicates=disallow_duplicates, on_progress=lambda o: bar(1),
                            max_pixels=max_pixels, skip_same_files=not allow_duplicates)
    except KeyboardInterrupt:
        click.echo("\nInterrupted: the samples committed so far are in the project, the rest is not "
                   "(uploading the same files again adds only the missing ones).", err=True)
        sys.exit(130)
    described = info_file or coco or yolo
    differ, job_id = _existing(store, items, report.outcomes, str(described), update_existing) \
        if described and not allow_duplicates else (None, None)
    if as_json:
        doc = report.to_json()
        if differ is not None:
            doc["existingSamples"] = {**differ.to_json(), **({"jobId": job_id} if job_id is not None else {})}
        print_json(doc)
    else:
        _print_summary(report.outcomes, len(report.added), len(report.duplicates), report.rejected)
        if differ is not None and differ.changes:
            _print_existing(store, len(differ.changes), differ.matched, job_id)
    if report.rejected:
        sys.exit(1)


def _existing(store: Any, items: list[Any], outcomes: list[Outcome], source: str,
              stage: bool) -> tuple[Any, int | None]:
    """How the samples already in the project differ from the file; with ``stage``, those
    differences staged as a job (its id)."""
    from ..info_updates import existing_differences, stage_updates

    differ = existing_differences(store, items, outcomes)
    job_id = stage_updates(store, differ.changes, source) if stage and differ.changes else None
    return differ, job_id


def _print_existing(store: Any, n: int, matched: int, job_id: int | None) -> None:
    if job_id is None:
        click.echo(f"{n} of the {matched} samples already in the project differ from the file "
                   f"(labels, boxes or metadata): add --update-existing to stage those changes for review.")
        return
    from .render import print_preview

    click.echo(f"Staged the file's changes to {n} existing sample{'s' if n != 1 else ''} as job {job_id}:")
    print_preview(store, job_id)
    click.echo(f"Apply with `labelblocks proposals apply {job_id}` (or review them: `labelblocks review`).")


def _print_summary(outcomes: list[Outcome], added: int, dups: int, rejected: list[Outcome]) -> None:
    click.echo(f"Added {added} sample{'s' if added != 1 else ''}, skipped {dups} duplicate{'s' if dups != 1 else ''}, "
               f"rejected {len(rejected)}.")
    for o in rejected:
        click.echo(f"  rejected {o.source}: {o.error}", err=True)


def register(group: click.Group) -> None:
    group.add_command(upload_cmd)
