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
@click.option("--iou", type=float, default=0.5, show_default=True,
              help="Boxes: the overlap (intersection over union, in (0, 1]) at which a box matches a true one.")
@click.option("--target-precision", type=click.FloatRange(0, 1), default=None,
              help="Boxes: also suggest, per class, the lowest score threshold that reaches this precision.")
@filter_options(include_disabled_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the evaluation document (the protocol's shape) as JSON.")
@pass_app
def evaluate_cmd(app: AppContext, job_id: int, against: str, against_job: int | None, group_by: tuple[str, ...],
                 min_group: int, iou: float, target_precision: float | None, as_json: bool, **kw: Any) -> None:
    """Evaluate a job's proposals against the truth, and the same per metadata group, worst
    first. Single labels: accuracy, the confusion matrix, precision / recall / F1 per class,
    a 95% bootstrap interval per group. Boxes (a job that adds boxes): COCO mAP figures, and
    precision / recall / F1 per class and a confusion matrix (with background) at --iou.
    Audio segments: not yet.

    \b
    Examples:
      labelblocks evaluate 3 --where reviewed=yes --group-by site
      labelblocks evaluate 3 --against-job 2 --json
    """
    from ..evaluate import evaluate

    f = build_filter(kw) if filter_given(kw) else None
    doc = evaluate(app.store, job_id, against_job=against_job, group_by=group_by, f=f, min_group=min_group, iou=iou,
                   target_precision=target_precision)
    if as_json:
        print_json(doc)
        return
    item = doc["modelValidationMetrics"][0]
    classes = doc["classes"]
    boxes = doc["task"] == "boxes"
    if boxes:
        coco = {m["name"]: m["fullPrecisionValue"] for m in item["additionalMetrics"]}
        click.echo(f"Job {job_id}: {doc['samples']} images, {doc['comparedWith']}; mAP {coco['mAP']:.3f}, "
                   f"mAP@50 {coco['mAP@[IoU=50]']:.3f}, mAP@75 {coco['mAP@[IoU=75]']:.3f}; per class at IoU {iou}:")
    else:
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
    if doc.get("thresholds"):
        click.echo("\nsuggested score thresholds (from the job's recorded scores; the model is not run again):")
        for t in doc["thresholds"]:
            reach = ""
            if t.get("targetPrecision") is not None:
                v = t["targetPrecisionValue"]
                reach = (f"; precision {t['targetPrecision']:.2f} from {v:.3f}" if v is not None
                         else f"; precision {t['targetPrecision']:.2f} is not reached")
            click.echo(f"  {t['key']:<20} {t['suggestedValueText']}{reach}")
        click.echo("  apply one with `labelblocks actions set ACTION --step N -p PARAM=VALUE` (for owlvit, the "
                   "confidence in the prompt line: `-p prompt=\"a cat (cat, 0.42)\"`)")
    for g in doc["groups"]:
        click.echo(f"\nby {g['key']} (worst first):")
        for v in g["values"]:
            small = "   (too few samples to tell)" if v["tooSmall"] else ""
            if boxes:
                click.echo(f"  {v['value']:<24} {v['samples']:>6} images    mAP@50 {v['mAP50']:.3f}{small}")
                continue
            lo, hi = v["accuracyInterval"]
            click.echo(f"  {v['value']:<24} {v['samples']:>6} samples   accuracy {v['accuracy']:6.1%} "
                       f"[{lo:.0%}, {hi:.0%}]   macro F1 {v['macroF1']:.2f}{small}")


def register(group: click.Group) -> None:
    group.add_command(evaluate_cmd)
