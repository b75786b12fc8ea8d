"""``labelblocks actions publish``, ``labelblocks inferences ...`` and ``labelblocks monitor``:
actions served as models, the inference log, its custom metadata and monitoring."""

from __future__ import annotations

import re
import time
from datetime import datetime
from pathlib import Path

import click

from ..errors import UsageError
from ._util import AppContext, parse_key_values, pass_app, print_json
from .actions import actions_group

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhdw])$")
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_since(text: str | None) -> float | None:
    """``24h``, ``7d``, ``30m`` (before now) or an ISO 8601 time, as seconds since 1970."""
    if not text:
        return None
    m = _DURATION.match(text.strip())
    if m:
        return time.time() - float(m[1]) * _UNIT[m[2]]
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        raise UsageError(f"--since: expected a duration (30m, 24h, 7d) or an ISO 8601 time, got {text!r}") from None


@actions_group.command("publish")
@click.argument("name")
@click.option("--step", "block", default=None, metavar="BLOCK",
              help="Publish this single block (with -p) as the model NAME, without saving an action.")
@click.option("-p", "--param", "params", multiple=True, metavar="PARAM=VALUE", help="A parameter of --step's block.")
@pass_app
def actions_publish(app: AppContext, name: str, block: str | None, params: tuple[str, ...]) -> None:
    """Freeze the action's steps and parameters as its next model version, which `labelblocks
    serve` answers inference requests with (model id NAME/VERSION); or a single block with
    its parameters (--step BLOCK -p ...).

    \b
    Examples:
      labelblocks actions publish boxes        # then: POST /infer/object_detection, model_id boxes/1
      labelblocks actions publish cats --step owlvit -p "prompt=a cat (cat, 0.3)"
    """
    from ..inference import publish_action

    if params and block is None:
        raise UsageError("-p goes with --step BLOCK (an action's parameters are its own: `actions set`)")
    version = publish_action(app.store, name, block, parse_key_values(params, "-p") if block else None)
    click.echo(f"Published {name}/{version}: `labelblocks serve` answers it (model_id \"{name}/{version}\").")


@click.group("inferences")
def inferences_group() -> None:
    """The inferences `labelblocks serve` answered: list, tag with metadata, add to the dataset."""


@inferences_group.command("list")
@click.option("--where", multiple=True, metavar="FIELD=VALUE", help="Custom metadata equals (repeatable: all).")
@click.option("--model", default=None, help="Only this model (ACTION/VERSION).")
@click.option("--since", default=None, help="Only the last 30m, 24h, 7d ... or since an ISO 8601 time.")
@click.option("--limit", type=click.IntRange(min=1), default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@pass_app
def inferences_list(app: AppContext, where: tuple[str, ...], model: str | None, since: str | None, limit: int,
                    as_json: bool) -> None:
    """Logged inferences, newest first.

    \b
    Example:
      labelblocks inferences list --where camera_location=canada --since 24h
    """
    from ..store.inferences import list_inferences

    rows = list_inferences(app.store, parse_key_values(where, "--where"), model, parse_since(since), limit=limit)
    if as_json:
        print_json([r.to_json() for r in rows])
        return
    if not rows:
        click.echo("No inference logged matches.")
    for r in rows:
        when = datetime.fromtimestamp(r.created_at).strftime("%Y-%m-%d %H:%M:%S")
        preds = ", ".join(f"{c} {conf:.2f}" for c, conf in list(zip(r.classes, r.confidences, strict=False))[:4])
        md = " ".join(f"{k}={v}" for k, v in r.metadata.items())
        click.echo(f"{r.id}  {when}  {r.model:<16} {r.latency_ms:7.1f} ms  "
                   f"{r.error or preds or '(nothing)'}{'  ' + md if md else ''}")


@inferences_group.command("tag")
@click.argument("args", nargs=-1, required=True, metavar="ID... FIELD=VALUE...")
@pass_app
def inferences_tag(app: AppContext, args: tuple[str, ...]) -> None:
    """Attach custom metadata to inferences (all of it, or nothing when an id is unknown).

    \b
    Example:
      labelblocks inferences tag 3f2a... 9c1b... camera_location=canada
    """
    from ..store.inferences import tag

    ids = [a for a in args if "=" not in a]
    fields = parse_key_values([a for a in args if "=" in a], "FIELD=VALUE")
    if not ids or not fields:
        raise UsageError("give inference ids and FIELD=VALUE pairs: `labelblocks inferences tag ID... FIELD=VALUE`")
    n = tag(app.store, [(ids, k, v) for k, v in fields.items()])
    click.echo(f"Tagged {len(ids)} inference{'s' if len(ids) != 1 else ''} ({n} values).")


@inferences_group.command("add-to-dataset")
@click.option("--where", multiple=True, metavar="FIELD=VALUE", help="Custom metadata equals (repeatable: all).")
@click.option("--model", default=None, help="Only this model (ACTION/VERSION).")
@click.option("--since", default=None, help="Only the last 30m, 24h, 7d ...")
@click.option("--max-confidence", type=click.FloatRange(0, 1), default=None,
              help="Only inferences whose best confidence is at most this (the hard cases).")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="At most this many.")
@click.option("--category", type=click.Choice(["training", "testing"]), default="training", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@pass_app
def inferences_add(app: AppContext, where: tuple[str, ...], model: str | None, since: str | None,
                   max_confidence: float | None, limit: int | None, category: str, as_json: bool) -> None:
    """Turn logged inferences whose images were kept (`serve --keep-images`) into samples:
    their custom metadata becomes the samples' metadata, their predictions a preview job's
    proposals to review (`labelblocks review JOB`) and apply.

    \b
    Example:
      labelblocks inferences add-to-dataset --max-confidence 0.5 --where camera_location=canada
    """
    from ..inference_dataset import add_to_dataset

    done = add_to_dataset(app.store, parse_key_values(where, "--where"), model, parse_since(since), max_confidence,
                          limit, category)
    if as_json:
        print_json(done)
        return
    if not done["samples"]:
        click.echo("No logged inference with a kept image matches (images are kept with `serve --keep-images`).")
        return
    click.echo(f"Added {done['samples']} samples ({done['reused']} already in the project); their predictions are "
               f"proposals of job{'s' if len(done['jobs']) != 1 else ''} {', '.join(map(str, done['jobs']))}: "
               f"review with `labelblocks review {done['jobs'][0]}`.")


@click.command("monitor")
@click.option("--by", "by", default=None, metavar="FIELD", help="Per value of this custom metadata field.")
@click.option("--since", default="7d", show_default=True, help="The period: the last 30m, 24h, 7d ...")
@click.option("--model", default=None, help="Only this model (ACTION/VERSION).")
@click.option("--plot", "plot", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write a PNG: requests and average confidence over time, per group.")
@click.option("--json", "as_json", is_flag=True, help="Print the inference-stats document as JSON.")
@pass_app
def monitor_cmd(app: AppContext, by: str | None, since: str, model: str | None, plot: Path | None,
                as_json: bool) -> None:
    """Inference monitoring: requests, errors, average confidence and response time of the
    period against the one before, per model and predicted class, and per --by value.

    \b
    Example:
      labelblocks monitor --by camera_location --since 24h --plot monitor.png
    """
    from ..inference import stats
    from ..store.inferences import list_inferences

    start = parse_since(since)
    assert start is not None
    end = time.time()
    rows = list_inferences(app.store, model=model, since=start, until=end)
    prev = list_inferences(app.store, model=model, since=start - (end - start), until=start)
    doc = stats(rows, prev, by)
    if plot is not None:
        from ..inference import write_plot

        write_plot(rows, by, start, end, plot)
    if as_json:
        print_json(doc)
        return
    click.echo(f"{doc['num_inferences']} inferences ({doc['prev_num_inferences']} the period before), "
               f"{doc['num_errors']} errors, average confidence {doc['avg_confidence']:.3f} "
               f"(before {doc['prev_avg_confidence']:.3f}), average response {doc['avg_response_time']:.1f} ms")
    for s in doc["inference_stats"]:
        click.echo(f"  {s['model_name']:<18} {s['predicted_class']:<20} {s['num_predictions']:>7} predictions  "
                   f"confidence {s['avg_confidence']:.3f}")
    if by:
        click.echo(f"\nby {by}:")
        for g in doc["groups"]:
            click.echo(f"  {g['value']:<24} {g['num_inferences']:>7} inferences  confidence {g['avg_confidence']:.3f}"
                       f"  {g['avg_response_time']:7.1f} ms  {g['num_errors']} errors")
    if plot is not None:
        click.echo(f"\nPlot: {plot}")


def register(group: click.Group) -> None:
    group.add_command(inferences_group)
    group.add_command(monitor_cmd)

