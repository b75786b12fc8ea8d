"""``labelblocks evaluate``: a job's proposals against the labels, overall and per metadata group."""

from __future__ import annotations

from typing import Any

import click

from ._util import AppContext, build_filter, filter_given, filter_options, pass_app, print_json


@click.command("evaluate")
@click.argument("job_id", type=int)
@click.option("--against", type=click.Choice(["labels"]), default="labels", show_default=True,
              help="The truth: the samples' labels as stored (e.g. select the reviewed ones with --where).")
@click.option("--against-job", type=int, default=None, help="The truth: the labels another job would leave.")
@click.option("--group-by", "group_by", multiple=True, metavar="KEY", help="Metrics per value of this metadata key "
              "(repeatable); samples without it form their own group.")
@click.option("--min-group", type=click.IntRange(min=1), default=10, show_default=True,
              help="Groups with fewer samples are shown, marked as too small to tell.")
@filter_options(include_disabled_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the evaluation document (the protocol's shape) as JSON.")
@pass_app
def evaluate_cmd(app: AppContext, job_id: int, against: str, against_job: int | None, group_by: tuple[str, ...],
                 min_group: int, as_json: bool, **kw: Any) -> None:
    """Evaluate a job's proposed labels against the truth: accuracy, the confusion matrix,
    precision / recall / F1 per class, and the same per metadata group, worst first, with a
    95% bootstrap interval. Single labels for now (boxes and audio segments: not yet).

    \b
    Examples:
      labelblocks evaluate 3 --where reviewed=yes --group-by site
      labelblocks evaluate 3 --against-job 2 --json
    """
    from ..evaluate import evaluate

    f = build_filter(kw) if filter_given(kw) else None
    doc = evaluate(app.store, job_id, against_job=against_job, group_by=group_by, f=f, min_group=min_group)
    if as_json:
        print_json(doc)
        return
    item = doc["modelValidationMetrics"][0]
    classes = doc["classes"]
    click.echo(f"Job {job_id}: {doc['samples']} samples compared with {doc['comparedWith']}; "
               f"accuracy {item['accuracy']:.1%}")
    if doc["notEvaluated"]:
        click.echo(f"(the job also changes {' and '.join(doc['notEvaluated'])}: not evaluated yet, labels only)")
    width = max(8, *(len(c) for c in classes)) + 2
    click.echo("\nconfusion matrix (rows: truth, columns: prediction)")
    click.echo(" " * width + "".join(f"{c[:width - 1]:>{width}}" for c in classes))
    for c, row in zip(classes, item["confusionMatrix"], strict=True):
        click.echo(f"{c[:width - 1]:<{width}}" + "".join(f"{int(v):>{width}}" for v in row))
    click.echo(f"\n{'class':<{width}}{'precision':>10}{'recall':>10}{'f1':>10}{'support':>10}")
    for c in [*classes, "macro avg", "weighted avg"]:
        r = item["report"].get(c)
        if r:
            click.echo(f"{c[:width - 1]:<{width}}{r['precision']:>10.2f}{r['recall']:>10.2f}{r['f1-score']:>10.2f}"
                       f"{int(r['support']):>10}")
    for g in doc["groups"]:
        click.echo(f"\nby {g['key']} (worst first):")
        for v in g["values"]:
            lo, hi = v["accuracyInterval"]
            small = "   (too few samples to tell)" if v["tooSmall"] else ""
            click.echo(f"  {v['value']:<24} {v['samples']:>6} samples   accuracy {v['accuracy']:6.1%} "
                       f"[{lo:.0%}, {hi:.0%}]   macro F1 {v['macroF1']:.2f}{small}")


def register(group: click.Group) -> None:
    group.add_command(evaluate_cmd)
