"""``labelblocks evaluate``: a job's proposals against the labels, overall and per metadata group."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from ..errors import UsageError
from ._util import AppContext, Progress, build_filter, filter_given, filter_options, pass_app
from .actions import _runner, actions_group

if TYPE_CHECKING:
    from ..filters import SampleFilter

F = TypeVar("F", bound=Callable[..., Any])


def evaluation_options(fn: F) -> F:
    """The options `evaluate` and `actions evaluate` share."""
    options = [
        click.option("--group-by", "group_by", multiple=True, metavar="KEY",
                     help="Metrics per value of this metadata key (repeatable); samples without it form their "
                          "own group."),
        click.option("--min-group", type=click.IntRange(min=1), default=10, show_default=True,
                     help="Groups with fewer samples are shown, marked as too small to tell."),
        click.option("--iou", type=float, default=0.5, show_default=True,
                     help="Boxes: the overlap (intersection over union, in (0, 1]) at which a box matches a true one."),
        click.option("--target-precision", type=click.FloatRange(0, 1), default=None,
                     help="Also suggest the lowest score threshold that reaches this precision."),
        click.option("--report", "report_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
                     help="Write an HTML report (plots, the worst samples drawn) into this folder."),
        click.option("--json", "as_json", is_flag=True,
                     help="Print the evaluation document (the protocol's shape) as JSON."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


@click.command("evaluate")
@click.argument("job_id", type=int)
@click.option("--against", type=click.Choice(["labels"]), default="labels", show_default=True,
              help="The truth: the samples' labels as stored (e.g. select the reviewed ones with --where).")
@click.option("--against-job", type=int, default=None, help="The truth: the labels another job would leave.")
@filter_options(include_disabled_default=True)
@evaluation_options
@pass_app
def evaluate_cmd(app: AppContext, job_id: int, against: str, against_job: int | None, **kw: Any) -> None:
    """Evaluate a job's proposals against the truth, and the same per metadata group, worst
    first, with 95% bootstrap intervals.

    \b
    Single labels: accuracy, the confusion matrix, precision / recall / F1 per class.
    Boxes (a job that adds boxes): COCO mAP figures; precision / recall / F1 per class and a
      confusion matrix with background, at --iou; score thresholds suggested per class.
    Audio segments (a job that changes them): accuracy and a confusion matrix over time.

    \b
    Examples:
      labelblocks evaluate 3 --where reviewed=yes --group-by site
      labelblocks evaluate 3 --against-job 2 --json
      labelblocks evaluate 3 --report report/ && open report/index.html
    """
    evaluation = {k: kw.pop(k) for k in EVALUATION_OPTIONS}
    run_and_print(app, job_id, against_job, build_filter(kw) if filter_given(kw) else None, **evaluation)


EVALUATION_OPTIONS = ("group_by", "min_group", "iou", "target_precision", "report_dir", "as_json")


def run_and_print(app: AppContext, job_id: int, against_job: int | None, f: SampleFilter | None,
                  group_by: tuple[str, ...], min_group: int, iou: float, target_precision: float | None,
                  report_dir: Path | None, as_json: bool) -> None:
    """Evaluate, print (text or --json), and write the --report."""
    from ..evaluate import run_evaluation

    ev = run_evaluation(app.store, job_id, against_job=against_job, group_by=group_by, f=f, min_group=min_group,
                        iou=iou, target_precision=target_precision)
    doc = ev.document
    if report_dir is not None:
        from ..report import write_report

        index = write_report(app.store, ev, report_dir)
    if as_json:
        import orjson

        click.echo(orjson.dumps(doc, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY).decode())
        return
    print_evaluation(doc)
    if report_dir is not None:
        click.echo(f"\nReport: {index}")


def print_evaluation(doc: dict[str, Any]) -> None:
    item = doc["modelValidationMetrics"][0]
    classes = doc["classes"]
    task = doc["task"]
    job_id = doc["jobId"]
    if task == "boxes":
        coco = {m["name"]: m["fullPrecisionValue"] for m in item["additionalMetrics"]}
        click.echo(f"Job {job_id}: {doc['samples']} images, {doc['comparedWith']}; mAP {coco['mAP']:.3f}, "
                   f"mAP@50 {coco['mAP@[IoU=50]']:.3f}, mAP@75 {coco['mAP@[IoU=75]']:.3f}; per class at IoU "
                   f"{doc['iou']}:")
    elif task == "segments":
        click.echo(f"Job {job_id}: {doc['samples']} audio samples ({doc['seconds']:.1f} s) compared with "
                   f"{doc['comparedWith']}; accuracy over time {item['accuracy']:.1%}")
    else:
        click.echo(f"Job {job_id}: {doc['samples']} samples compared with {doc['comparedWith']}; "
                   f"accuracy {item['accuracy']:.1%}")
    if doc["notEvaluated"]:
        click.echo(f"(the job also changes {' and '.join(doc['notEvaluated'])}: not evaluated here)")
    width = max(8, *(len(c) for c in classes)) + 2
    unit = " (seconds)" if task == "segments" else ""
    click.echo(f"\nconfusion matrix{unit} (rows: truth, columns: prediction)")
    click.echo(" " * width + "".join(f"{c[:width - 1]:>{width}}" for c in classes))
    for c, row in zip(classes, item["confusionMatrix"], strict=True):
        cells = "".join(f"{v:>{width}.1f}" if task == "segments" else f"{int(v):>{width}}" for v in row)
        click.echo(f"{c[:width - 1]:<{width}}" + cells)
    click.echo(f"\n{'class':<{width}}{'precision':>10}{'recall':>10}{'f1':>10}{'support':>10}")
    for c in [*classes, "macro avg", "weighted avg"]:
        r = item["report"].get(c)
        if r:
            support = f"{r['support']:>10.1f}" if task == "segments" else f"{int(r['support']):>10}"
            click.echo(f"{c[:width - 1]:<{width}}{r['precision']:>10.2f}{r['recall']:>10.2f}{r['f1-score']:>10.2f}"
                       + support)
    if doc.get("thresholds"):
        click.echo("\nsuggested score thresholds (from the job's recorded scores; the model is not run again):")
        for t in doc["thresholds"]:
            reach = ""
            if t.get("targetPrecision") is not None:
                v = t["targetPrecisionValue"]
                reach = (f"; precision {t['targetPrecision']:.2f} from {v:.3f}" if v is not None
                         else f"; precision {t['targetPrecision']:.2f} is not reached")
            now = f"now {t['value']:g} (step {t['step']})" if t.get("currentFrom") == "step" else \
                f"lowest proposed score {t['value']:.3f}"
            click.echo(f"  {t['key']:<20} {now}; {t['suggestedValueText']}{reach}")
            if t.get("command"):
                click.echo(f"    apply: {t['command']}")
        if doc.get("applyAll"):
            click.echo(f"  apply every suggestion: {doc['applyAll']}")
        if any(not t.get("command") for t in doc["thresholds"]):
            click.echo("  apply one with `labelblocks actions set ACTION --step N -p PARAM=VALUE` (for owlvit, the "
                       "minimum confidence in the prompt line: `-p prompt=\"a cat (cat, 0.42)\"`)")
    if doc.get("thresholdsNote"):
        click.echo(f"\nthresholds: {doc['thresholdsNote']}")
    for g in doc["groups"]:
        click.echo(f"\nby {g['key']} (worst first):")
        for v in g["values"]:
            small = "   (too few samples to tell)" if v["tooSmall"] else ""
            if task == "boxes":
                lo, hi = v["mAP50Interval"]
                click.echo(f"  {v['value']:<24} {v['samples']:>6} images    mAP@50 {v['mAP50']:.3f} "
                           f"[{lo:.3f}, {hi:.3f}]{small}")
                continue
            lo, hi = v["accuracyInterval"]
            f1 = f"   macro F1 {v['macroF1']:.2f}"
            if "macroF1Interval" in v:
                f1 += " [{:.2f}, {:.2f}]".format(*v["macroF1Interval"])
            click.echo(f"  {v['value']:<24} {v['samples']:>6} samples   accuracy {v['accuracy']:6.1%} "
                       f"[{lo:.0%}, {hi:.0%}]{f1}{small}")


@actions_group.command("evaluate")
@click.argument("name")
@filter_options(include_disabled_default=True)
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Preview at most this many labeled samples.")
@evaluation_options
@pass_app
def actions_evaluate(app: AppContext, name: str, limit: int | None, **kw: Any) -> None:
    """Preview an action on labeled samples (a label, boxes or segments) and evaluate its
    proposals against their labels, in one command (`actions preview` then `evaluate`).

    \b
    Example:
      labelblocks actions evaluate guess --where reviewed=yes --group-by site
    """
    from ..actions import get_action
    from ..filters import SampleFilter

    action = get_action(app.store, name)
    runner = _runner(app)
    selected = runner.select(action)
    evaluation = {k: kw.pop(k) for k in EVALUATION_OPTIONS}
    given = filter_given(kw)
    flt = build_filter(kw) if given else SampleFilter(include_disabled=True)
    rows = app.store.scan(flt.replace(ids=selected), "label", "bounding_boxes", "structured_labels")
    labeled = [sid for sid, label, boxes, segments in rows if label or boxes != "[]" or segments != "[]"]
    if not labeled:
        raise UsageError(f"action {name} selects no labeled samples{' matching the filters' if given else ''}: "
                         "there is nothing to evaluate against")
    as_json = evaluation["as_json"]
    progress = Progress(not as_json)
    try:
        summary = runner.preview(action, ids=labeled[:limit] if limit else labeled, limit=None, on_progress=progress)
    finally:
        progress.close()
    if not as_json:
        click.echo(f"Preview job {summary.job_id}: {summary.total} labeled samples, {summary.failed} failed.")
    run_and_print(app, summary.job_id, None, None, **evaluation)


def register(group: click.Group) -> None:
    group.add_command(evaluate_cmd)
