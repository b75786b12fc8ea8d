"""``labelblocks samples ...``."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import click

from ..errors import UsageError
from ._util import (
    AppContext,
    build_filter,
    filter_given,
    filter_options,
    load_json_arg,
    one_line,
    parse_ids,
    pass_app,
    print_json,
)

if TYPE_CHECKING:
    from ..listing import ListedSample, Listing
    from ..model import Sample
    from ..store import Store


@click.group("samples")
def samples_group() -> None:
    """List, inspect and edit samples."""


def _summary_line(s: Sample | ListedSample) -> str:
    what = one_line(s.label or "-")
    if s.bounding_boxes:
        what += f" [{len(s.bounding_boxes)} box{'es' if len(s.bounding_boxes) != 1 else ''}]"
    if s.structured_labels:
        what += f" [{len(s.structured_labels)} ranges]"
    md = " ".join(f"{one_line(k)}={one_line(v)}" for k, v in s.metadata.items())
    flag = " (disabled)" if s.is_disabled else ""
    return f"{s.id:>7}  {s.category:<10} {one_line(s.filename):<32} {what:<24} {md}{flag}"


_PAGE = 1000  # samples read at a time when every match is printed


@samples_group.command("list")
@filter_options(include_disabled_default=False)
@click.option("--limit", type=int, default=None,
              help="At most this many samples (default: 50 in the table, every match with --json or --nl).")
@click.option("--offset", type=click.IntRange(min=0), default=0, help="Skip this many samples first.")
@click.option("--json", "as_json", is_flag=True, help="Print samples as a JSON list (every match unless --limit).")
@click.option("--nl", "as_lines", is_flag=True, help="Print samples as JSON Lines, one per line, as they are read.")
@click.option("--count", "count_only", is_flag=True, help="Print only how many samples match.")
@pass_app
def list_cmd(app: AppContext, limit: int | None, offset: int, as_json: bool, as_lines: bool, count_only: bool,
             **kw: Any) -> None:
    """List samples matching the filters, by id.

    The table shows the first 50 (and says how many match); --json and --nl print every match
    unless --limit is given.

    \b
    Examples:
      labelblocks samples list --where site=Paris --where site=Lyon --missing reviewed
      labelblocks samples list --filter-json '[{"key":"device","op":"neq","values":["cam2"]}]' --json
      labelblocks samples list --nl | jq -r .filename
      labelblocks samples list --where site=Paris --count
    """
    if limit is not None and limit < 1:
        raise UsageError(f"--limit: expected 1 or more, got {limit} (leave it out for every match)")
    if as_json and as_lines:
        raise UsageError("--json and --nl cannot be used together")
    f = build_filter(kw)
    if as_json or as_lines:
        if count_only:
            print_json({"count": app.store.count(f)})
        else:
            _stream(app, f, limit, offset, as_lines)
        return
    # the table and the count read through the listing where they can: it starts without
    # importing SQLAlchemy or pydantic
    reader: Listing | Store = app.listing() or app.store
    if count_only:
        click.echo(reader.count(f))
        return
    limit = limit or 50
    rows = reader.list_samples(f, limit=limit, offset=offset)
    if not rows:
        total = reader.count(f)
        click.echo("No samples match." if not total else f"No samples from offset {offset}: {total} match.")
        return
    click.echo(f"{'id':>7}  {'category':<10} {'filename':<32} {'label':<24} metadata")
    for s in rows:
        click.echo(_summary_line(s))
    if len(rows) == limit:
        total = reader.count(f)
        if total > offset + limit:
            click.echo(f"(samples {offset + 1} to {offset + limit} of {total}: --offset {offset + limit} for the next "
                       f"ones, --limit N for more at once, --json or --nl for all)", err=True)


def _stream(app: AppContext, f: Any, limit: int | None, offset: int, as_lines: bool) -> None:
    """Every match (or ``limit``) as a JSON list or JSON Lines, read a page at a time."""
    first, left = True, limit
    if not as_lines:
        click.echo("[", nl=False)
    while left is None or left > 0:
        page = app.store.list_samples(f, limit=min(_PAGE, left) if left is not None else _PAGE, offset=offset)
        if not page:
            break
        for s in page:
            text = json.dumps(s.to_json(), ensure_ascii=False, default=str)
            click.echo(text if as_lines else ("\n  " if first else ",\n  ") + text, nl=as_lines)
            first = False
        offset += len(page)
        left = None if left is None else left - len(page)
    if not as_lines:
        click.echo("\n]" if not first else "]")


@samples_group.command("show")
@click.argument("sample_id", type=int)
@click.option("--json", "as_json", is_flag=True, help="Print the sample as JSON.")
@pass_app
def show_cmd(app: AppContext, sample_id: int, as_json: bool) -> None:
    """Show one sample: labels, boxes, metadata and media facts.

    \b
    Example:
      labelblocks samples show 12 --json
    """
    from .. import provenance

    s = app.store.get_sample(sample_id)
    record = provenance.load(app.store.provenance_texts([sample_id]).get(sample_id))
    boxes_by = provenance.box_writers(s, record)
    fields_by = provenance.field_writers(s, record)
    if as_json:
        # who wrote what, beside the protocol's shape: per box (in order), the label, the
        # disabled state, the structured labels and each metadata value (absent: uploaded)
        print_json({**s.to_json(), "writtenBy": {"boundingBoxes": boxes_by, **fields_by}})
        return
    by = provenance.describe_writer
    click.echo(f"Sample {s.id}: {s.filename}")
    click.echo(f"  category:  {s.category}{'  (disabled)' if s.is_disabled else ''}")
    click.echo(f"  label:     {s.label or '-'}" + (f"  (by {by(fields_by['label'])})" if 'label' in fields_by else ""))
    if s.width is not None:
        click.echo(f"  image:     {s.width}x{s.height} {s.media_type}")
    if s.frequency is not None:
        click.echo(f"  audio:     {s.frequency:g} Hz, {s.values_count} values, {s.total_length_ms or 0:.0f} ms")
    for b, w in zip(s.bounding_boxes, boxes_by, strict=True):
        click.echo(f"  box:       {b.label} x={b.x} y={b.y} w={b.width} h={b.height}  (by {by(w)})")
    for sl in s.structured_labels:
        click.echo(f"  range:     {sl.start_index}..{sl.end_index} {sl.label}")
    md_by = fields_by.get("metadata", {})
    for k, v in s.metadata.items():
        click.echo(f"  metadata:  {k}={v}" + (f"  (by {by(md_by[k])})" if k in md_by else ""))
    click.echo(f"  hash:      {s.content_hash}")


def _selected(app: AppContext, ids: tuple[str, ...], kw: dict[str, Any], verb: str) -> tuple[list[int], bool]:
    """The samples a command acts on: ``ids``, the filters' matches, or both (the ids that
    match); and whether filters chose them."""
    by_filter = filter_given(kw)
    if not ids and not by_filter:
        raise click.UsageError(f"which samples? give ids (`samples {verb} 3 4 10-20`) or filters as `samples list` "
                               f"takes them (`samples {verb} --where site=Paris`)")
    f = build_filter(kw, parse_ids(ids) if ids else None)
    if not by_filter:
        return list(f.ids or []), False  # explicit ids: one that does not exist is an error, named
    return app.store.select_ids(f), True


def _done(n: int, verb: str, as_json: bool, ids: list[int]) -> None:
    if as_json:
        print_json({verb: n, "sampleIds": ids})
    else:
        click.echo(f"{verb.capitalize()} {n} sample{'s' if n != 1 else ''}.")


@samples_group.command("disable")
@click.argument("ids", nargs=-1)
@filter_options(include_disabled_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print how many and which samples as JSON.")
@pass_app
def disable_cmd(app: AppContext, ids: tuple[str, ...], as_json: bool, **kw: Any) -> None:
    """Disable samples (they stay, but blocks and training skip them): by id, or every sample
    the filters select (the same filters as `samples list`).

    
    Examples:
      labelblocks samples disable 3 4 10-20
      labelblocks samples disable --where device=broken-mic
    """
    chosen, _ = _selected(app, ids, kw, "disable")
    _done(app.store.set_disabled(chosen, True) if chosen else 0, "disabled", as_json, chosen)


@samples_group.command("enable")
@click.argument("ids", nargs=-1)
@filter_options(include_disabled_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print how many and which samples as JSON.")
@pass_app
def enable_cmd(app: AppContext, ids: tuple[str, ...], as_json: bool, **kw: Any) -> None:
    """Enable disabled samples: by id, or every sample the filters select.

    
    Examples:
      labelblocks samples enable 3,4
      labelblocks samples enable --where site=Paris
    """
    chosen, _ = _selected(app, ids, kw, "enable")
    _done(app.store.set_disabled(chosen, False) if chosen else 0, "enabled", as_json, chosen)


@samples_group.command("delete")
@click.argument("ids", nargs=-1)
@filter_options(include_disabled_default=True)
@click.option("--yes", "-y", is_flag=True, help="Delete the samples the filters select without asking.")
@click.option("--json", "as_json", is_flag=True, help="Print how many and which samples as JSON.")
@pass_app
def delete_cmd(app: AppContext, ids: tuple[str, ...], yes: bool, as_json: bool, **kw: Any) -> None:
    """Delete samples and their metadata (blobs no other sample uses are removed): by id, or
    every sample the filters select, after saying how many and asking (--yes: do not ask).

    
    Examples:
      labelblocks samples delete 7
      labelblocks samples delete --where source=old-bucket --yes
    """
    chosen, by_filter = _selected(app, ids, kw, "delete")
    if by_filter and chosen and not yes:  # no answer (no terminal, no input) deletes nothing
        click.confirm(f"Delete {len(chosen)} sample{'s' if len(chosen) != 1 else ''} and their labels and "
                      "metadata?", abort=True)
    _done(app.store.delete_samples(chosen) if chosen else 0, "deleted", as_json, chosen)


@samples_group.command("label")
@click.argument("sample_id", type=int)
@click.option("--label", help="The new label.")
@click.option("--clear", is_flag=True, help="Remove the label.")
@click.option("--boxes", metavar="JSON", help="Replace the bounding boxes: JSON list, @file or - for stdin.")
@click.option("--structured-labels", metavar="JSON", help="Replace the structured labels: JSON list, @file or -.")
@pass_app
def label_cmd(app: AppContext, sample_id: int, label: str | None, clear: bool, boxes: str | None,
              structured_labels: str | None) -> None:
    """Set a sample's label, bounding boxes or structured labels.

    \b
    Examples:
      labelblocks samples label 12 --label cat
      labelblocks samples label 12 --boxes '[{"label":"cat","x":4,"y":8,"width":30,"height":20}]'
      labelblocks samples label 40 --structured-labels @ranges.json
    """
    if label is None and not clear and boxes is None and structured_labels is None:
        raise click.UsageError("nothing to change: give --label, --clear, --boxes or --structured-labels")
    if label is not None and clear:
        raise click.UsageError("--label and --clear cannot be used together")
    # validate everything before writing anything
    from ..model import parse_boxes, parse_structured_labels

    parsed_boxes = parse_boxes(load_json_arg(boxes, "--boxes"), "--boxes") if boxes is not None else None
    parsed_sl = (parse_structured_labels(load_json_arg(structured_labels, "--structured-labels"), "--structured-labels")
                 if structured_labels is not None else None)
    store = app.store
    store.get_sample(sample_id)
    if parsed_boxes is not None:
        store.set_bounding_boxes(sample_id, parsed_boxes, by="cli")
    if parsed_sl is not None:
        store.set_structured_labels(sample_id, parsed_sl)
    if label is not None or clear:
        store.set_label(sample_id, None if clear else label, by="cli")
    click.echo(f"Updated sample {sample_id}.")


def register(group: click.Group) -> None:
    group.add_command(samples_group)
