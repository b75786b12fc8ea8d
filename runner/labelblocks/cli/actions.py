"""``labelblocks actions ...``: create, list, show, delete, preview and run actions."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from ..errors import UsageError
from ._util import (
    AppContext,
    Progress,
    StepCommand,
    build_filter,
    engine_from,
    engine_options,
    filter_given,
    filter_options,
    parse_ids,
    parse_key_values,
    pass_app,
    print_json,
)
from .render import changes_json, errors_json, print_estimate, print_preview, record_order

if TYPE_CHECKING:
    from ..executors.ray import RayEngine
    from ..runner import Runner


def _runner(app: AppContext, engine: RayEngine | None = None) -> Runner:
    from ..runner import Runner

    return Runner(app.store, app.registry(), engine)


@click.group("actions")
def actions_group() -> None:
    """Chains of labeling blocks: create, preview, run."""


@actions_group.command("create", cls=StepCommand)
@click.argument("name", required=False)
@click.option("--step", "step_", multiple=True, metavar="BLOCK", help="A step: the block to run (repeat for a chain).")
@click.option("-p", "--param", "param_", multiple=True, metavar="PARAM=VALUE", help="A parameter of the step before it.")
@click.option("--file", "file_", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Read the action from a JSON or YAML file (schema: parameters/action.schema.json).")
@click.option("--data", "data_category", type=click.Choice(["allData", "unlabeledData", "enabledData",
                                                            "dataWithoutMetadataKey", "dataWithMetadata"]),
              default=None, help="Which samples the action labels (default allData).")
@click.option("--data-key", help="The metadata key for dataWithoutMetadataKey / dataWithMetadata.")
@click.option("--data-value", help="The metadata value for dataWithMetadata.")
@filter_options(include_disabled_default=True)
@click.option("--set-metadata", multiple=True, metavar="KEY=VALUE", help="Metadata written to every sample a run applies to.")
@click.option("--no-cache", is_flag=True, help="Never reuse results of an earlier preview for unchanged steps.")
@click.option("--replace", is_flag=True, help="Replace an existing action of the same name.")
@pass_app
@click.pass_context
def actions_create(ctx: click.Context, app: AppContext, name: str | None, step_: tuple[str, ...],
                   param_: tuple[str, ...], file_: Path | None, data_category: str | None, data_key: str | None,
                   data_value: str | None, set_metadata: tuple[str, ...], no_cache: bool, replace: bool,
                   **kw: Any) -> None:
    """Create an action: steps of blocks with parameters, which samples, metadata to set.

    Parameters are checked against each block when the action is saved.

    \b
    Examples:
      labelblocks actions create dedup --step near-duplicates -p hamming-threshold=4 --set-metadata ai-labeled=true
      labelblocks actions create boxes --step owlvit -p prompt="dog (dog, 0.2)" \\
          --step gpt4o-bbox-relabel -p which-labels=dog --where site=Paris --data unlabeledData
      labelblocks actions create --file action.yaml
    """
    from ..actions import load_action_file, parse_action, save_action, validate_steps

    steps = ctx.meta.get("lb_steps", [])
    if file_ is not None:
        if steps:
            raise UsageError("give the steps either with --step or in --file, not both")
        action = load_action_file(file_)
        if name and name != action.name:
            action = action.model_copy(update={"name": name})
    else:
        if not name:
            raise UsageError("give the action a NAME (or use --file)")
        if not steps:
            raise UsageError("an action needs at least one --step BLOCK")
        md = parse_key_values(set_metadata, "--set-metadata")
        doc: dict[str, Any] = {
            "name": name, "steps": steps, "dataCategory": data_category or "allData",
            "setMetadata": [{"key": k, "value": v} for k, v in md.items()], "cacheUnchangedSteps": not no_cache,
        }
        if data_key:
            doc["dataMetadataKey"] = data_key
        if data_value is not None:
            doc["dataMetadataValue"] = data_value
        if filter_given(kw):
            doc["filter"] = build_filter(kw).to_json()
        action = parse_action(doc)
    action.selection()  # checks the data category's key
    validate_steps(action, app.registry())
    save_action(app.store, action, replace=replace)
    click.echo(f"Saved action {action.name} ({len(action.steps)} step{'s' if len(action.steps) != 1 else ''}).")


@actions_group.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@pass_app
def actions_list(app: AppContext, as_json: bool) -> None:
    """List saved actions.

    \b
    Example:
      labelblocks actions list
    """
    from ..actions import list_actions

    acts = list_actions(app.store)
    if as_json:
        print_json([a.to_json() for a in acts])
        return
    if not acts:
        click.echo("No actions yet: create one with `labelblocks actions create`.")
    for a in acts:
        click.echo(f"{a.name:<24} {' -> '.join(s.block for s in a.steps)}   [{a.data_category}]")


@actions_group.command("show")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@pass_app
def actions_show(app: AppContext, name: str, as_json: bool) -> None:
    """Show an action's steps, parameters and selection.

    \b
    Example:
      labelblocks actions show boxes --json
    """
    from ..actions import get_action

    a = get_action(app.store, name)
    if as_json:
        print_json(a.to_json())
        return
    click.echo(f"action {a.name}: data {a.data_category}"
               + (f" key={a.data_metadata_key}" if a.data_metadata_key else "")
               + (f" value={a.data_metadata_value}" if a.data_metadata_value is not None else ""))
    for i, s in enumerate(a.steps, 1):
        params = " ".join(f"{k}={v!r}" for k, v in s.parameters.items())
        click.echo(f"  step {i}: {s.block} {params}")
    if a.filter:
        click.echo(f"  filter: {json.dumps(a.filter.to_json())}")
    if a.set_metadata:
        click.echo("  after a run, sets: " + ", ".join(f"{m.key}={m.value}" for m in a.set_metadata))


@actions_group.command("set")
@click.argument("name")
@click.option("--step", "step_no", type=click.IntRange(min=1), default=None, help="The step to change (1 is the first).")
@click.option("-p", "--param", "params", multiple=True, metavar="PARAM=VALUE", help="A parameter to set (repeatable).")
@click.option("--unset", multiple=True, metavar="PARAM", help="Go back to the block's default for this parameter.")
@click.option("--suggested", is_flag=True,
              help="Set the thresholds the latest evaluation of this action's jobs suggests (`labelblocks evaluate`).")
@pass_app
def actions_set(app: AppContext, name: str, step_no: int | None, params: tuple[str, ...], unset: tuple[str, ...],
                suggested: bool) -> None:
    """Change parameters of one step of a saved action (checked against the block, as when
    it was created): to apply a threshold an evaluation suggested, say.

    \b
    Examples:
      labelblocks actions set boxes --step 1 -p prompt="a person (person, 0.27)"
      labelblocks actions set boxes --suggested
    """
    from ..actions import get_action, save_action, validate_steps

    action = get_action(app.store, name)
    if suggested:
        if params or unset or step_no is not None:
            raise UsageError("--suggested sets what the evaluation suggests: give it without --step, -p or --unset")
        changes = suggested_parameters(app, name)
        if not changes:
            return
    else:
        if not params and not unset:
            raise UsageError("nothing to change: give -p PARAM=VALUE, --unset PARAM or --suggested")
        if step_no is None:
            raise UsageError("give the step to change: --step N (1 is the first)")
        changes = {step_no: (parse_key_values(params, "-p"), unset)}
    steps = list(action.steps)
    for n, (values, removed) in changes.items():
        if n > len(steps):
            raise UsageError(f"action {name} has {len(steps)} step{'s' if len(steps) != 1 else ''}, not {n}")
        merged = {**steps[n - 1].parameters, **values}
        for p in removed:
            merged.pop(p, None)
        steps[n - 1] = steps[n - 1].model_copy(update={"parameters": merged})
    changed = action.model_copy(update={"steps": steps})
    validate_steps(changed, app.registry())
    save_action(app.store, changed, replace=True)
    for n in changes:
        step = steps[n - 1]
        shown = " ".join(f"{k}={v!r}" for k, v in step.parameters.items())
        click.echo(f"Action {name}, step {n} ({step.block}): {shown or 'the defaults'}")


@actions_group.command("delete")
@click.argument("name")
@pass_app
def actions_delete(app: AppContext, name: str) -> None:
    """Delete a saved action (its jobs stay).

    \b
    Example:
      labelblocks actions delete boxes
    """
    from ..actions import delete_action

    delete_action(app.store, name)
    click.echo(f"Deleted action {name}.")


@actions_group.command("preview")
@click.argument("name")
@click.option("--limit", type=click.IntRange(min=1), default=10, show_default=True, help="Preview this many samples.")
@click.option("--ids", help="Preview these sample ids instead (e.g. 1,2,10-20).")
@click.option("--no-cache", is_flag=True, help="Recompute even unchanged steps.")
@click.option("--max-failures", type=click.IntRange(min=0), default=None, help="Stop after more failures than this.")
@click.option("--estimate", is_flag=True, help="Print the expected requests and tokens of paid blocks; run nothing.")
@click.option("--sort-by", "sort_by", default=None, metavar="KEY",
              help="Show samples by this score in the blocks' records, highest first (anomaly_score).")
@click.option("--json", "as_json", is_flag=True, help="Print the job summary and proposals as JSON.")
@engine_options
@pass_app
def actions_preview(app: AppContext, name: str, limit: int, ids: str | None, no_cache: bool,
                    max_failures: int | None, estimate: bool, sort_by: str | None, as_json: bool, **engine: Any) -> None:
    """Run an action on a few samples and stage the results as proposals of a new job.

    Nothing changes in the dataset: review with `labelblocks proposals show JOB`, then
    `labelblocks proposals apply JOB`, or run the whole action with `labelblocks actions run`.

    \b
    Examples:
      labelblocks actions preview boxes --limit 5
      labelblocks actions preview boxes --ids 3,4,9 --json
      labelblocks actions preview boxes --engine ray --ray-address auto --workers 4
    """
    from ..actions import get_action

    action = get_action(app.store, name)
    runner = _runner(app, engine_from(engine))
    if estimate:
        print_estimate(runner.estimate(action, ids=parse_ids([ids]) if ids else None, limit=limit), as_json)
        return
    progress = Progress(not as_json)
    try:
        summary = runner.preview(action, ids=parse_ids([ids]) if ids else None, limit=limit,
                                 use_cache=not no_cache, max_failures=max_failures, on_progress=progress)
    finally:
        progress.close()
    if as_json:
        from ..store import jobs as job_store
        from ..store import proposals as proposal_store

        out = summary.to_json()
        out["proposals"] = proposal_store.job_proposals(app.store, summary.job_id)
        out.update(changes_json(app.store, summary.job_id))
        out["errors"] = errors_json(job_store.job_errors(app.store, summary.job_id))
        print_json(out)
    else:
        click.echo(f"Preview job {summary.job_id}: {summary.total} samples, {summary.failed} failed, "
                   f"{summary.cached} step results reused from cache.")
        _print_skips(summary)
        order = None
        if sort_by:
            from ..store import proposals as proposal_store

            order = record_order(proposal_store.job_proposals(app.store, summary.job_id), sort_by, summary.job_id)
        print_preview(app.store, summary.job_id, order=order)
        click.echo(f"Apply with `labelblocks proposals apply {summary.job_id}`.")
    if summary.failed:
        sys.exit(1)


@actions_group.command("run")
@click.argument("name")
@click.option("--no-cache", is_flag=True, help="Recompute even samples previewed with the same steps.")
@click.option("--max-failures", type=click.IntRange(min=0), default=None, help="Stop after more failures than this.")
@click.option("--restart", is_flag=True, help="Start a new job instead of resuming an unfinished one.")
@click.option("--all", "all_samples", is_flag=True,
              help="Also run samples this action already labeled and that have not changed since.")
@click.option("--estimate", is_flag=True, help="Print the expected requests and tokens of paid blocks; run nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print the job summary as JSON.")
@engine_options
@pass_app
def actions_run(app: AppContext, name: str, no_cache: bool, max_failures: int | None, restart: bool,
                all_samples: bool, estimate: bool, as_json: bool, **engine: Any) -> None:
    """Label every selected sample: run all steps, then apply each sample's result atomically.

    An interrupted run (Ctrl-C, a crash, a kill) resumes when run again: finished samples are
    not recomputed. Samples previewed with the same blocks and parameters reuse the preview.
    Samples this action already labeled, unchanged since, are passed over (so running it again
    after adding data labels only the new samples); --all runs them too. Exit status 1 when any
    sample failed.

    \b
    Examples:
      labelblocks actions run boxes
      labelblocks actions run boxes --engine ray --ray-address ray://head:10001 --workers 8 --gpus-per-worker 1
    """
    from ..actions import get_action

    action = get_action(app.store, name)
    runner = _runner(app, engine_from(engine))
    if estimate:
        print_estimate(runner.estimate(action), as_json)
        return
    progress = Progress(not as_json)
    try:
        summary = runner.run(action, use_cache=not no_cache, max_failures=max_failures, on_progress=progress,
                             resume=not restart, all_samples=all_samples)
    except KeyboardInterrupt:
        progress.close()
        click.echo("\nInterrupted: run the same command again to resume.", err=True)
        sys.exit(130)
    finally:
        progress.close()
    if as_json:
        print_json(summary.to_json())
    elif summary.status == "up-to-date":
        click.echo(f"Nothing to do: action {name} already labeled all {summary.unchanged} of its samples and none "
                   "changed since (`--all` runs them again).")
    else:
        resumed = " (resumed)" if summary.resumed else ""
        click.echo(f"Job {summary.job_id}{resumed}: applied {summary.applied} of {summary.total} samples, "
                   f"{summary.failed} failed, {summary.cached} step results reused.")
        _print_skips(summary)
        if summary.rounds:
            click.echo(f"Samples changed while the run labeled them: labeled again as they are now "
                       f"({summary.rounds} more round{'s' if summary.rounds != 1 else ''}).")
        if summary.left_out:
            shown = ", ".join(map(str, summary.left_out[:20])) + (" ..." if len(summary.left_out) > 20 else "")
            click.echo(f"Left out {len(summary.left_out)} sample{'s' if len(summary.left_out) != 1 else ''} that kept "
                       f"changing while the run labeled them (or were deleted), so as not to overwrite those "
                       f"changes: {shown}. Run the action again to label them.", err=True)
        if summary.failed:
            click.echo(f"See the failures with `labelblocks jobs show {summary.job_id}`.", err=True)
    if summary.failed or summary.left_out:
        sys.exit(1)


def _print_skips(summary: Any) -> None:
    if getattr(summary, "unchanged", 0):
        click.echo(f"Passed over {summary.unchanged} sample{'s' if summary.unchanged != 1 else ''} this action already "
                   "labeled, unchanged since (`--all` runs them again).")
    if summary.skipped:
        click.echo(f"Skipped {summary.skipped} sample{'s' if summary.skipped != 1 else ''} that no step operates on "
                   "(left as they are).")
    for note in summary.notes:
        click.echo(f"  {note}")


def suggested_parameters(app: AppContext, name: str) -> dict[int, tuple[dict[str, str], tuple[str, ...]]]:
    """Per step, the parameters the latest evaluation of the action's jobs suggests."""
    from ..store.evaluations import latest_for_action

    found = latest_for_action(app.store, name)
    if found is None:
        raise UsageError(f"no job of action {name} has been evaluated: run `labelblocks actions evaluate {name}` "
                         "(or `labelblocks evaluate JOB`) first")
    job_id, _, doc = found
    apply = doc.get("apply") or []
    if not apply:
        none = [t["key"] for t in doc.get("thresholds", []) if t.get("noSuggestion")]
        why = (f": no recorded score finds a true one for {', '.join(none)}" if none else
               "" if doc.get("thresholds") else ": it has no thresholds (its blocks recorded no scores)")
        click.echo(f"The evaluation of job {job_id} suggests no change to action {name}{why}. Nothing changed.")
        return {}
    click.echo(f"From the evaluation of job {job_id}:")
    return {int(a["step"]): ({str(k): str(v) for k, v in a["parameters"].items()}, ()) for a in apply}


def register(group: click.Group) -> None:
    group.add_command(actions_group)
