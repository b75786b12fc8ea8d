"""``labelblocks split`` and ``labelblocks split check``."""

from __future__ import annotations

import sys
from typing import Any

import click

from ._util import AppContext, build_filter, filter_options, pass_app, print_json

SHOWN = 30  # rows of a label or key table shown in text output


@click.group("split", invoke_without_command=True)
@click.option("--train", type=float, default=0.8, show_default=True, help="Share of samples for training.")
@click.option("--validation", type=float, default=0.1, show_default=True, help="Share for validation.")
@click.option("--test", type=float, default=0.1, show_default=True, help="Share for testing.")
@click.option("--keep-together", "keep", multiple=True, metavar="KEY",
              help="Samples sharing KEY's value (all such keys' values) stay in one split. Repeatable.")
@click.option("--stratify", type=click.Choice(["label", "none"]), default="label", show_default=True,
              help="Keep each split's label distribution close to the whole.")
@click.option("--stratify-key", "stratify_keys", multiple=True, metavar="KEY",
              help="Also balance the values of metadata KEY (site, device, ...). Repeatable.")
@click.option("--reassign", is_flag=True,
              help="Place every selected sample anew, also those an earlier split placed.")
@filter_options()
@click.option("--dry-run", is_flag=True, help="Print the split without writing anything.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.pass_context
def split_group(ctx: click.Context, train: float, validation: float, test: float, keep: tuple[str, ...],
                stratify: str, stratify_keys: tuple[str, ...], reassign: bool, dry_run: bool, as_json: bool,
                **kw: Any) -> None:
    """Split samples into training, validation and testing without leakage.

    Every group of samples sharing the values of the --keep-together keys (the frames of one
    video, the recordings of one night) lands in one split; within that, label and
    --stratify-key distributions stay close to the whole. The same data and options give the
    same split on every machine, and samples placed by an earlier split never move: adding
    data later places only the new groups. A leakage check runs at the end (exit code 1 if a
    group is split).

    \b
    Examples:
      labelblocks split --keep-together video_file --dry-run
      labelblocks split --train 0.7 --validation 0.15 --test 0.15 --keep-together video_file --stratify-key site
      labelblocks split check --keep-together video_file
    \b
    No useful metadata? Group near-identical images first, then keep the groups together:
      labelblocks actions create dedup --step near-duplicates && labelblocks actions run dedup
      labelblocks split --keep-together duplicate_group
    """
    if ctx.invoked_subcommand is not None:
        return
    from ..split import SplitOptions, run_split

    app = ctx.find_object(AppContext)
    assert app is not None
    f = build_filter(kw)
    opts = SplitOptions((train, validation, test), keep, stratify == "label", stratify_keys, reassign)
    report = run_split(app.store, f, opts, dry_run)
    if as_json:
        print_json(report)
    else:
        _print_report(report)
    if report.get("leaks"):
        sys.exit(1)


def _print_report(r: dict[str, Any]) -> None:
    from ..split import NAMES

    splits = r["splits"]
    head = f"{'dry run: nothing written. ' if r['dryRun'] else ''}{r['samples']} samples"
    if r["keepTogether"]:
        head += f" in {r['groups']} groups (kept together by {', '.join(r['keepTogether'])})"
    click.echo(head)
    click.echo(f"  {'split':<12}{'samples':>10}{'share':>9}{'target':>9}{'groups':>9}")
    for cat, s in splits.items():
        click.echo(f"  {NAMES[cat]:<12}{s['samples']:>10}{s['share']:>9.1%}{r['ratios'][cat]:>9.1%}{s['groups']:>9}")
    _table("label", {cat: s["labels"] for cat, s in splits.items()})
    for key in r["stratifyKeys"]:
        _table(key, {cat: s["keys"][key] for cat, s in splits.items()})
    if r["missingKey"]:
        click.echo(f"{r['missingKey']} samples lack {' or '.join(r['keepTogether'])}: each is its own group.")
    click.echo(f"{'Would place' if r['dryRun'] else 'Placed'} {r['placed']} samples"
               + (f", kept {r['kept']} placed by earlier splits" if r["kept"] else "")
               + f"; {r['changed']} {'would change' if r['dryRun'] else 'changed'} category.")
    if "leaks" in r:
        _print_leaks(r["leaks"], r["keepTogether"])


def _table(title: str, per_split: dict[str, dict[str, int]]) -> None:
    """Share of each value within each split, and in the whole."""
    from ..split import NAMES

    totals: dict[str, int] = {}
    for counts in per_split.values():
        for v, c in counts.items():
            totals[v] = totals.get(v, 0) + c
    n_all = sum(totals.values()) or 1
    sizes = {cat: sum(c.values()) or 1 for cat, c in per_split.items()}
    click.echo(f"  {title:<20}" + "".join(f"{NAMES[cat]:>12}" for cat in per_split) + f"{'all':>12}")
    ordered = sorted(totals, key=lambda v: (-totals[v], v))
    for v in ordered[:SHOWN]:
        cells = "".join(f"{per_split[cat].get(v, 0) / sizes[cat]:>12.1%}" for cat in per_split)
        click.echo(f"  {v[:20]:<20}{cells}{totals[v] / n_all:>12.1%}")
    if len(ordered) > SHOWN:
        click.echo(f"  ... {len(ordered) - SHOWN} more values (--json has them all)")


def _print_leaks(leaks: list[dict[str, Any]], keep: list[str]) -> None:
    from ..split import NAMES

    if not leaks:
        click.echo(f"Leakage check ({', '.join(keep)}): no group is in more than one split.")
        return
    click.echo(f"Leakage check ({', '.join(keep)}): {len(leaks)} groups are in more than one split:")
    for lk in leaks[:50]:
        click.echo(f"  {lk['group']}: " + ", ".join(f"{NAMES[c]} {n}" for c, n in lk["counts"].items()))
    if len(leaks) > 50:
        click.echo(f"  ... and {len(leaks) - 50} more (--json lists them all)")


@split_group.command("check")
@click.option("--keep-together", "keep", multiple=True, required=True, metavar="KEY",
              help="The key(s) whose groups must not cross splits. Repeatable.")
@filter_options()
@click.option("--json", "as_json", is_flag=True, help="Print the leaking groups as JSON.")
@pass_app
def split_check(app: AppContext, keep: tuple[str, ...], as_json: bool, **kw: Any) -> None:
    """List every group whose samples sit in more than one split (exit code 1 if any).

    \b
    Example:
      labelblocks split check --keep-together video_file
    """
    from ..split import leaks

    found = [lk.to_json() for lk in leaks(app.store, build_filter(kw), keep)]
    if as_json:
        print_json({"keepTogether": list(keep), "leaks": found})
    else:
        _print_leaks(found, list(keep))
    if found:
        sys.exit(1)


def register(group: click.Group) -> None:
    group.add_command(split_group)
