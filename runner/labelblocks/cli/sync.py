"""``labelblocks sync``."""

from __future__ import annotations

import sys
import time
from typing import TYPE_CHECKING

import click

from ..constants import UPLOAD_CATEGORIES
from ._util import AppContext, is_interactive, parse_key_values, pass_app, print_json

if TYPE_CHECKING:
    from ..sync import SyncReport

_VERB = {"add": "add", "replace": "replace", "delete": "delete", "disable": "disable",
         "keep-changed": "keep (changed)", "keep-gone": "keep (gone)", "fail": "fail"}


@click.command("sync")
@click.argument("source", required=False)
@click.option("--list", "list_sources", is_flag=True, help="List the sources synced and the settings each remembers.")
@click.option("--key", default="source", show_default=True,
              help="The metadata key naming each sample's source object (its version goes in KEY_etag).")
@click.option("--on-delete", type=click.Choice(["delete", "disable", "keep"]), default="delete", show_default=True,
              help="What becomes of a sample whose source object is gone.")
@click.option("--on-change", type=click.Choice(["replace", "keep"]), default="replace", show_default=True,
              help="Replace the media of a sample whose source object changed (id, labels, metadata stay), "
                   "or keep it as it is.")
@click.option("--metadata", "metadata", multiple=True, metavar="KEY=VALUE",
              help="Metadata for every sample the sync adds (repeatable).")
@click.option("--label-from", type=click.Choice(["folder", "filename", "none"]), default="filename",
              show_default=True, help="A new sample's label: its folder's name, its file name's leading "
                                      "letters (dog.01.jpg is 'dog'), or none.")
@click.option("--category", type=click.Choice(UPLOAD_CATEGORIES), default="training", show_default=True,
              help="The category of new samples (split: 80/20 training/testing from the content hash).")
@click.option("--dry-run", is_flag=True, help="Print what the sync would do, and change nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary (and in a dry run the plan) as JSON.")
@pass_app
def sync_cmd(app: AppContext, source: str | None, list_sources: bool, key: str, on_delete: str, on_change: str,
             metadata: tuple[str, ...], label_from: str, category: str, dry_run: bool, as_json: bool) -> None:
    """Keep the project in step with a folder or bucket (SOURCE: a folder, or an fsspec URL
    such as s3://bucket/prefix; credentials come from the environment).

    Adds the objects the project lacks, replaces the media of samples whose object changed
    (a file's content, an object's ETag), and deletes the samples whose object is gone, only
    among samples synced from SOURCE. Each carries metadata `source` (its URL) and
    `source_etag` (its version), so actions select them with `--where source=...` or
    `--has source`. Running it again changes nothing; a sync that was interrupted finishes
    when it is run again. `--metadata` is remembered for SOURCE: later syncs give its new
    files the same (`sync --list` shows what each source remembers).

    \b
    Examples:
      labelblocks sync photos/ --dry-run
      labelblocks sync photos/ --metadata site=Paris --label-from folder
      labelblocks sync s3://bucket/cameras --on-delete disable --json
      labelblocks sync --list
    """
    from ..sync import SyncOptions, sync

    if list_sources:
        from ..store.sources import list_sources as listed

        rows = listed(app.store)
        if as_json:
            print_json([{"source": src, **settings} for src, settings, _ in rows])
        elif not rows:
            click.echo("No source remembers settings yet (`labelblocks sync SOURCE --metadata KEY=VALUE`).")
        for src, settings, _ in ([] if as_json else rows):
            md = settings.get("metadata", {})
            click.echo(f"{src}\n  metadata for new files: " + (", ".join(f"{k}={v}" for k, v in md.items()) or "-"))
        return
    if source is None:
        raise click.UsageError("give the SOURCE to sync (a folder or an fsspec URL), or --list")

    opts = SyncOptions(key=key, on_delete=on_delete, on_change=on_change,  # type: ignore[arg-type]
                       metadata=parse_key_values(metadata, "--metadata"), label_from=label_from,  # type: ignore[arg-type]
                       category=category, dry_run=dry_run)
    plan: list[dict[str, object]] = []

    def event(kind: str, url: str, sample_id: int | None) -> None:
        if as_json:
            if dry_run:
                plan.append({"do": kind, "source": url, **({"id": sample_id} if sample_id is not None else {})})
        elif dry_run:
            click.echo(f"  {_VERB[kind]:<15} {url}" + (f"  (sample {sample_id})" if sample_id is not None else ""))

    status = _Status(enabled=not as_json and not dry_run and is_interactive())
    try:
        report = sync(app.store, source, opts, on_event=event, on_progress=status)
    except KeyboardInterrupt:
        status.close()
        click.echo("\nInterrupted: what was written is whole (added samples in batches, each replacement and "
                   "removal); run the same sync again to finish.", err=True)
        sys.exit(130)
    status.close()
    if as_json:
        doc = report.to_json()
        if dry_run:
            doc["plan"] = plan
        print_json(doc)
    else:
        _print_summary(report, on_delete)
    if report.failed:
        sys.exit(1)


class _Status:
    """One status line on stderr, redrawn at most a few times a second."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.shown = 0.0
        self.width = 0

    def __call__(self, listed: int, r: SyncReport) -> None:
        now = time.monotonic()
        if not self.enabled or now - self.shown < 0.2:
            return
        self.shown = now
        line = (f"Syncing: {listed:,} objects listed, {r.added:,} added, {r.replaced:,} replaced, "
                f"{r.unchanged:,} unchanged, {r.failed:,} failed")
        click.echo("\r" + line.ljust(self.width), nl=False, err=True)
        self.width = len(line)

    def close(self) -> None:
        if self.enabled and self.width:
            click.echo("\r" + " " * self.width + "\r", nl=False, err=True)


def _print_summary(r: SyncReport, on_delete: str) -> None:
    def n(count: int, one: str, many: str | None = None) -> str:
        return f"{count:,} {one if count == 1 else (many or one)}"

    if r.dry_run:
        removal = {"delete": "delete", "disable": "disable", "keep": "remove"}[on_delete]
        head = f"Dry run, nothing changed: would add {r.added:,}, replace {r.replaced:,}, {removal} {r.removed:,}"
    else:
        removal = {"delete": "deleted", "disable": "disabled", "keep": "removed"}[on_delete]
        head = f"Added {r.added:,}, replaced {r.replaced:,}, {removal} {r.removed:,}"
    parts = [head, n(r.unchanged, "unchanged")]
    if r.kept_changed:
        parts.append(n(r.kept_changed, "changed at the source and kept"))
    if r.kept_gone:
        parts.append(n(r.kept_gone, "gone from the source and kept"))
    if r.ignored:
        parts.append(n(r.ignored, "file", "files") + " ignored (hidden, or not images or audio)")
    parts.append(n(r.failed, "failed"))
    click.echo("; ".join(parts) + f" ({r.source}).")
    for url, why in r.failures:
        click.echo(f"  failed {url}: {why}", err=True)
    if r.failed > len(r.failures):
        click.echo(f"  ... and {r.failed - len(r.failures):,} more failures", err=True)


def register(group: click.Group) -> None:
    group.add_command(sync_cmd)

