"""``labelblocks metadata ...``."""

from __future__ import annotations

import re
from typing import Any

import click

from ..errors import UsageError
from ._util import (
    AppContext,
    build_filter,
    filter_given,
    filter_options,
    parse_ids,
    parse_key_values,
    pass_app,
    print_json,
)


@click.group("metadata")
def metadata_group() -> None:
    """Set, remove and summarise sample metadata."""


def _target_ids(app: AppContext, ids: str | None, kw: dict[str, Any]) -> list[int]:
    given = filter_given(kw)
    if ids is None and not given:
        raise UsageError("say which samples: a sample ID, --ids 1,2,3, or filters such as --where site=Paris")
    f = build_filter(kw, ids=parse_ids([ids]) if ids is not None else None)
    if ids is not None and not given:
        return f.ids or []
    return app.store.select_ids(f)


@metadata_group.command("set")
@click.argument("args", nargs=-1, required=True, metavar="[ID] KEY=VALUE...")
@filter_options(include_disabled_default=True)
@click.option("--ids", help="Sample ids, e.g. 1,2,10-20.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@pass_app
def set_cmd(app: AppContext, args: tuple[str, ...], ids: str | None, as_json: bool, **kw: Any) -> None:
    """Set metadata on one sample, or on every sample matching the filters (one transaction).

    \b
    Examples:
      labelblocks metadata set 12 site=Paris device=cam1
      labelblocks metadata set --where site=Paris reviewed=yes
    """
    args_l = list(args)
    if args_l and "=" not in args_l[0]:
        if not re.fullmatch(r"[0-9][0-9,\- ]*", args_l[0]):
            raise UsageError(f"metadata set: expected KEY=VALUE, got {args_l[0]!r}: the '=' is missing")
        if ids is not None:
            raise UsageError("give the sample as ID or --ids, not both")
        ids = args_l.pop(0)
    if not args_l:
        raise UsageError("nothing to set: give KEY=VALUE pairs")
    values = parse_key_values(args_l, "metadata set")
    targets = _target_ids(app, ids, kw)
    n = app.store.update_metadata(targets, values)
    if as_json:
        print_json({"matched": len(targets), "changed": n})
    else:
        click.echo(f"Changed {n} of {len(targets)} matching sample{'s' if len(targets) != 1 else ''}.")


@metadata_group.command("unset")
@click.argument("args", nargs=-1, required=True, metavar="[ID] KEY...")
@filter_options(include_disabled_default=True)
@click.option("--ids", help="Sample ids, e.g. 1,2,10-20.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@pass_app
def unset_cmd(app: AppContext, args: tuple[str, ...], ids: str | None, as_json: bool, **kw: Any) -> None:
    """Remove metadata keys from one sample, or from every sample matching the filters.

    \b
    Examples:
      labelblocks metadata unset 12 reviewed
      labelblocks metadata unset --where site=Paris reason prompt
    """
    args_l = list(args)
    if ids is None and args_l and args_l[0].isdigit():
        ids = args_l.pop(0)
    if not args_l:
        raise UsageError("nothing to remove: give one or more KEYs")
    targets = _target_ids(app, ids, kw)
    n = app.store.update_metadata(targets, unset_keys=args_l)
    if as_json:
        print_json({"matched": len(targets), "changed": n})
    else:
        click.echo(f"Changed {n} of {len(targets)} matching sample{'s' if len(targets) != 1 else ''}.")


@metadata_group.command("keys")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@pass_app
def keys_cmd(app: AppContext, as_json: bool) -> None:
    """List metadata keys with how many distinct values and samples each has.

    \b
    Example:
      labelblocks metadata keys --json
    """
    rows = app.store.metadata_keys()
    if as_json:
        print_json([{"key": k, "distinctValues": d, "samples": n} for k, d, n in rows])
        return
    if not rows:
        click.echo("No metadata yet.")
        return
    click.echo(f"{'key':<24} {'values':>8} {'samples':>9}")
    for k, d, n in rows:
        click.echo(f"{k:<24} {d:>8} {n:>9}")


@metadata_group.command("stats")
@click.argument("key")
@click.option("--by-label", is_flag=True, help="Count labels within each value.")
@click.option("--by-split", is_flag=True, help="Count splits (training/validation/testing) within each value.")
@filter_options()
@click.option("--json", "as_json", is_flag=True, help="Print the counts as JSON.")
@pass_app
def metadata_stats(app: AppContext, key: str, by_label: bool, by_split: bool, as_json: bool, **kw: Any) -> None:
    """Count samples per value of KEY (numeric values with many distinct values are binned).

    \b
    Examples:
      labelblocks metadata stats site --by-label
      labelblocks metadata stats temperature --by-split --json
    """
    from ..stats import value_stats

    r = value_stats(app.store, key, build_filter(kw), by_label, by_split)
    if as_json:
        print_json(r)
        return
    click.echo(f"{key}: {r['samples']} samples, {r['missing']} without it" + (" (numeric, binned)" if r["binned"] else ""))
    for v in r["values"]:
        extra = ""
        if by_label:
            extra += "  labels: " + ", ".join(f"{k} {n}" for k, n in v["labels"].items())
        if by_split:
            extra += "  splits: " + ", ".join(f"{k} {n}" for k, n in v["splits"].items())
        click.echo(f"  {v['value'][:30]:<30}{v['count']:>9}{v['share']:>8.1%}{extra}")


@metadata_group.command("cooccurrence")
@click.argument("key_a")
@click.argument("key_b")
@filter_options()
@click.option("--json", "as_json", is_flag=True, help="Print the table as JSON.")
@pass_app
def metadata_cooccurrence(app: AppContext, key_a: str, key_b: str, as_json: bool, **kw: Any) -> None:
    """Count samples per pair of values of KEY_A and KEY_B (e.g. which devices each site used).

    \b
    Example:
      labelblocks metadata cooccurrence site device
    """
    from ..split import MISSING
    from ..stats import cooccurrence

    r = cooccurrence(app.store, key_a, key_b, build_filter(kw))
    if as_json:
        print_json(r)
        return
    cols = sorted({b for c in r["counts"].values() for b in c}, key=lambda v: (v == MISSING, v))
    shown = cols[:12]
    click.echo(f"{r['samples']} samples; rows: {key_a}, columns: {key_b}")
    click.echo(f"  {'':<20}" + "".join(f"{c[:11]:>12}" for c in shown))
    for va, c in r["counts"].items():
        click.echo(f"  {va[:20]:<20}" + "".join(f"{c.get(b, 0):>12}" for b in shown))
    if len(cols) > len(shown):
        click.echo(f"  ... {len(cols) - len(shown)} more values of {key_b} (--json has them all)")


def register(group: click.Group) -> None:
    group.add_command(metadata_group)
