"""``labelblocks actions ...``, ``labelblocks jobs ...`` and ``labelblocks proposals ...``."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from ..errors import InvalidInput, UsageError
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


class _StepCommand(click.Command):
    """Keeps ``--step BLOCK -p K=V ... --step BLOCK2 -p ...`` in order: each -p belongs to the
    --step before it."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        steps: list[dict[str, Any]] = []
        rest: list[str] = []
        i = 0
        while i < len(args):
            a = args[i]
            name, eq, val = a.partition("=")
            if name in ("--step", "-p", "--param"):
                if eq:
                    value = val
                elif i + 1 < len(args):
                    value = args[i + 1]
                    i += 1
                else:
                    raise click.UsageError(f"{name} needs a value", ctx)
                if name == "--step":
                    steps.append({"block": value, "parameters": {}})
                else:
                    if not steps:
                        raise click.UsageError(f"{name} {value}: give --step BLOCK before its parameters", ctx)
                    k, e2, v = value.partition("=")
                    if not e2 or not k:
                        raise click.UsageError(f"{name}: expected PARAM=VALUE, got {value!r}", ctx)
                    steps[-1]["parameters"][k] = v
            else:
                rest.append(a)
            i += 1
        ctx.meta["lb_steps"] = steps
        return super().parse_args(ctx, rest)


class _Progress:
    """One progress bar per phase on a terminal; silent otherwise."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled and sys.stderr.isatty()
        self.phase: str | None = None
        self.bar: Any = None
        self.done = 0

    def __call__(self, phase: str, done: int, total: int) -> None:
        if not self.enabled:
            return
        if phase != self.phase:
            self.close()
            self.phase = phase
            self.bar = click.progressbar(length=total, label=phase, file=sys.stderr, show_pos=True, show_eta=True)
            self.bar.__enter__()
            self.done = 0
        self.bar.update(done - self.done)
        self.done = done

    def close(self) -> None:
        if self.bar is not None:
            self.bar.__exit__(None, None, None)
            self.bar = None


def _runner(app: AppContext) -> Any:
    from ..runner import Runner

    return Runner(app.store, app.registry())


@click.group("actions")
def actions_group() -> None:
    """Chains of labeling blocks: create, preview, run."""


@actions_group.command("create", cls=_StepCommand)
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
            doc["filter"] = build_filter(kw).model_dump(exclude_defaults=True)
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
        click.echo(f"  filter: {json.dumps(a.filter.model_dump(exclude_defaults=True))}")
    if a.set_metadata:
        click.echo("  after a run, sets: " + ", ".join(f"{m.key}={m.value}" for m in a.set_metadata))


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


def _print_preview(app: AppContext, runner: Any, job_id: int, limit: int = 50) -> int:
    """Prints up to ``limit`` samples' proposals and failures; returns how many samples have either."""
    from ..runner import compose, describe_change, stale_samples

    changes = runner.proposals_for(job_id)
    errors = _job_errors(app, job_id)
    ids = sorted(set(changes) | set(errors))
    samples = {s.id: s for s in app.store.get_samples(ids[:limit], missing_ok=True)} if ids else {}
    with app.store.engine.connect() as conn:
        stale = stale_samples(conn, job_id, ids[:limit])
    for sid in ids[:limit]:
        s = samples.get(sid)
        if s is None:
            click.echo(f"sample {sid}: deleted since the job ran")
            continue
        if sid in errors:
            click.echo(f"sample {sid} {s.filename}: FAILED at step {errors[sid][0]}: {errors[sid][1]}")
            continue
        if sid in stale:
            click.echo(f"sample {sid} {s.filename}: changed since the job ran; applying leaves it as it is "
                       f"(preview again for what it needs now)")
            continue
        lines = describe_change(s, compose(changes[sid]))
        click.echo(f"sample {sid} {s.filename}: " + ("no change" if not lines else lines[0]))
        for line in lines[1:]:
            click.echo(f"    {line}")
    if len(ids) > limit:
        click.echo(f"... and {len(ids) - limit} more: `labelblocks proposals show {job_id}`")
    return len(ids)


def _errors_json(errors: dict[int, tuple[int, str]]) -> list[dict[str, Any]]:
    return [{"sampleId": k, "step": v[0], "error": v[1]} for k, v in sorted(errors.items())]


def _discarded_count(app: AppContext, job_id: int) -> int:
    """How many of the job's samples were left out (discarded, or deleted or changed before apply)."""
    with app.store.engine.connect() as conn:
        return int(conn.exec_driver_sql("SELECT count(*) FROM job_samples WHERE job_id = ? AND status = 'discarded'",
                                        (job_id,)).scalar_one())


def _job_errors(app: AppContext, job_id: int) -> dict[int, tuple[int, str]]:
    from sqlalchemy import and_, select

    from ..store.schema import job_samples

    with app.store.engine.connect() as conn:
        return {r[0]: (r[1], r[2]) for r in conn.execute(
            select(job_samples.c.sample_id, job_samples.c.failed_step, job_samples.c.error)
            .where(and_(job_samples.c.job_id == job_id, job_samples.c.status == "failed")))}


def _print_estimate(steps: list[dict[str, Any]], as_json: bool) -> None:
    if as_json:
        print_json({"steps": steps})
        return
    for st in steps:
        head = f"step {st['step']} ({st['block']}), {st['samples']} samples: "
        if st.get("estimate", True) is None:
            click.echo(head + "no paid requests")
        else:
            click.echo(head + f"{st['requests']} requests, about {st['promptTokens']} prompt tokens and "
                              f"{st['completionTokens']} completion tokens")
    click.echo("Nothing was sent. Answers already in the project's cache will not be paid again.")


@actions_group.command("preview")
@click.argument("name")
@click.option("--limit", type=click.IntRange(min=1), default=10, show_default=True, help="Preview this many samples.")
@click.option("--ids", help="Preview these sample ids instead (e.g. 1,2,10-20).")
@click.option("--no-cache", is_flag=True, help="Recompute even unchanged steps.")
@click.option("--max-failures", type=click.IntRange(min=0), default=None, help="Stop after more failures than this.")
@click.option("--estimate", is_flag=True, help="Print the expected requests and tokens of paid blocks; run nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print the job summary and proposals as JSON.")
@pass_app
def actions_preview(app: AppContext, name: str, limit: int, ids: str | None, no_cache: bool,
                    max_failures: int | None, estimate: bool, as_json: bool) -> None:
    """Run an action on a few samples and stage the results as proposals of a new job.

    Nothing changes in the dataset: review with `labelblocks proposals show JOB`, then
    `labelblocks proposals apply JOB`, or run the whole action with `labelblocks actions run`.

    \b
    Examples:
      labelblocks actions preview boxes --limit 5
      labelblocks actions preview boxes --ids 3,4,9 --json
    """
    from ..actions import get_action

    action = get_action(app.store, name)
    runner = _runner(app)
    if estimate:
        _print_estimate(runner.estimate(action, ids=parse_ids([ids]) if ids else None, limit=limit), as_json)
        return
    progress = _Progress(not as_json)
    try:
        summary = runner.preview(action, ids=parse_ids([ids]) if ids else None, limit=limit,
                                 use_cache=not no_cache, max_failures=max_failures, on_progress=progress)
    finally:
        progress.close()
    if as_json:
        out = summary.to_json()
        from ..runner import job_proposals

        out["proposals"] = job_proposals(app.store, summary.job_id)
        out["errors"] = _errors_json(_job_errors(app, summary.job_id))
        print_json(out)
    else:
        click.echo(f"Preview job {summary.job_id}: {summary.total} samples, {summary.failed} failed, "
                   f"{summary.cached} step results reused from cache.")
        _print_preview(app, runner, summary.job_id)
        click.echo(f"Apply with `labelblocks proposals apply {summary.job_id}`.")
    if summary.failed:
        sys.exit(1)


@actions_group.command("run")
@click.argument("name")
@click.option("--no-cache", is_flag=True, help="Recompute even samples previewed with the same steps.")
@click.option("--max-failures", type=click.IntRange(min=0), default=None, help="Stop after more failures than this.")
@click.option("--restart", is_flag=True, help="Start a new job instead of resuming an unfinished one.")
@click.option("--estimate", is_flag=True, help="Print the expected requests and tokens of paid blocks; run nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print the job summary as JSON.")
@pass_app
def actions_run(app: AppContext, name: str, no_cache: bool, max_failures: int | None, restart: bool,
                estimate: bool, as_json: bool) -> None:
    """Label every selected sample: run all steps, then apply each sample's result atomically.

    An interrupted run (Ctrl-C, a crash, a kill) resumes when run again: finished samples are
    not recomputed. Samples previewed with the same blocks and parameters reuse the preview.
    Exit status 1 when any sample failed.

    \b
    Example:
      labelblocks actions run boxes
    """
    from ..actions import get_action

    action = get_action(app.store, name)
    runner = _runner(app)
    if estimate:
        _print_estimate(runner.estimate(action), as_json)
        return
    progress = _Progress(not as_json)
    try:
        summary = runner.run(action, use_cache=not no_cache, max_failures=max_failures, on_progress=progress,
                             resume=not restart)
    except KeyboardInterrupt:
        progress.close()
        click.echo("\nInterrupted: run the same command again to resume.", err=True)
        sys.exit(130)
    finally:
        progress.close()
    if as_json:
        print_json(summary.to_json())
    else:
        resumed = " (resumed)" if summary.resumed else ""
        click.echo(f"Job {summary.job_id}{resumed}: applied {summary.applied} of {summary.total} samples, "
                   f"{summary.failed} failed, {summary.cached} step results reused.")
        if summary.failed:
            click.echo(f"See the failures with `labelblocks jobs show {summary.job_id}`.", err=True)
    if summary.failed:
        sys.exit(1)


@click.group("jobs")
def jobs_group() -> None:
    """Preview and run jobs."""


def _job_row(app: AppContext, job_id: int) -> Any:
    from sqlalchemy import select

    from ..errors import NotFound
    from ..store.schema import jobs

    with app.store.engine.connect() as conn:
        row = conn.execute(select(jobs).where(jobs.c.id == job_id)).first()
    if row is None:
        raise NotFound(f"no job {job_id}: see `labelblocks jobs list`")
    return row


def _job_json(app: AppContext, row: Any) -> dict[str, Any]:
    from ..runner import job_state

    state = job_state(app.store, row.id)
    return {"id": row.id, "action": row.action, "kind": row.kind, "status": row.status,
            "samples": len(state.ids), "counts": state.counts(), "usage": json.loads(row.usage or "{}"),
            "error": row.error, "definition": json.loads(row.definition), "created": row.created_at,
            "updated": row.updated_at}


@jobs_group.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@pass_app
def jobs_list(app: AppContext, as_json: bool) -> None:
    """List jobs, newest first.

    \b
    Example:
      labelblocks jobs list
    """
    from sqlalchemy import select

    from ..store.schema import jobs

    with app.store.engine.connect() as conn:
        rows = conn.execute(select(jobs).order_by(jobs.c.id.desc())).all()
    data = [_job_json(app, r) for r in rows]
    if as_json:
        print_json(data)
        return
    if not data:
        click.echo("No jobs yet.")
    for j in data:
        counts = ", ".join(f"{n} {s}" for s, n in sorted(j["counts"].items()))
        click.echo(f"{j['id']:>5}  {j['kind']:<8} {j['status']:<12} {j['action']:<20} {counts}")


@jobs_group.command("show")
@click.argument("job_id", type=int)
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@pass_app
def jobs_show(app: AppContext, job_id: int, as_json: bool) -> None:
    """Show a job: status, steps and parameters, per-sample counts, usage and failures.

    \b
    Example:
      labelblocks jobs show 3
    """
    j = _job_json(app, _job_row(app, job_id))
    errors = _job_errors(app, job_id)
    if as_json:
        j["failures"] = _errors_json(errors)
        print_json(j)
        return
    click.echo(f"job {j['id']}: {j['kind']} of action {j['action']} — {j['status']}")
    for s in j["definition"].get("steps", []):
        click.echo(f"  step {s['step']}: {s['block']} {s['version']} {json.dumps(s['parameters'])}")
    click.echo("  samples: " + ", ".join(f"{n} {s}" for s, n in sorted(j["counts"].items())))
    if j["usage"]:
        click.echo("  usage: " + ", ".join(f"{k}={v:g}" for k, v in sorted(j["usage"].items())))
    if j["error"]:
        click.echo(f"  error: {j['error']}")
    from ..external import job_log_path

    if job_log_path(app.store, job_id).exists():
        click.echo(f"  log: `labelblocks jobs log {job_id}`")
    for sid, (step, err) in sorted(errors.items())[:50]:
        click.echo(f"  sample {sid} failed at step {step}: {err}")


@jobs_group.command("log")
@click.argument("job_id", type=int)
@click.option("--tail", "tail", type=click.IntRange(min=1), default=None, help="Only the last N lines.")
@pass_app
def jobs_log(app: AppContext, job_id: int, tail: int | None) -> None:
    """Print what a job's external blocks wrote (their output, secrets redacted).

    \b
    Example:
      labelblocks jobs log 3 --tail 50
    """
    from ..external import job_log_path

    _job_row(app, job_id)
    path = job_log_path(app.store, job_id)
    if not path.exists():
        click.echo(f"Job {job_id} has no log: only external blocks write one.", err=True)
        return
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    for line in lines[-tail:] if tail else lines:
        click.echo(line)


@click.group("proposals")
def proposals_group() -> None:
    """Review, apply or discard the proposed changes of a preview job."""


@proposals_group.command("show")
@click.argument("job_id", type=int)
@click.option("--json", "as_json", is_flag=True, help="Print as the protocol's {proposedChanges: [...]} JSON.")
@pass_app
def proposals_show(app: AppContext, job_id: int, as_json: bool) -> None:
    """Show what a job's proposals would change, per sample.

    \b
    Example:
      labelblocks proposals show 3
    """
    row = _job_row(app, job_id)
    runner = _runner(app)
    if as_json:
        from ..runner import job_proposals

        print_json({"proposedChanges": job_proposals(app.store, job_id)})
        return
    if _print_preview(app, runner, job_id, limit=1000) == 0:
        click.echo(_why_no_proposals(row))


def _why_no_proposals(row: Any) -> str:
    job = f"Job {row.id} ({row.kind} of action {row.action})"
    if row.status == "discarded":
        return f"{job}: its proposals were discarded."
    if row.status == "failed":
        return f"{job} failed before it proposed anything: {row.error} (see `labelblocks jobs show {row.id}`)."
    if row.status in ("running", "interrupted"):
        return f"{job} has no proposals yet: it is {row.status}."
    return f"{job} proposed no changes."


@proposals_group.command("apply")
@click.argument("job_id", type=int)
@click.option("--ids", help="Apply only these sample ids (e.g. 1,2,10-20).")
@pass_app
def proposals_apply(app: AppContext, job_id: int, ids: str | None) -> None:
    """Apply a preview job's proposals (all, or --ids), each sample atomically.

    \b
    Examples:
      labelblocks proposals apply 3
      labelblocks proposals apply 3 --ids 12,14
    """
    from ..actions import get_action
    from ..errors import NotFound

    row = _job_row(app, job_id)
    if row.status == "discarded":
        raise InvalidInput(f"job {job_id}'s proposals were discarded")
    try:
        set_md = get_action(app.store, row.action).set_metadata
    except NotFound:
        set_md = []
    runner = _runner(app)
    left_before = _discarded_count(app, job_id)
    n = runner.apply(job_id, ids=parse_ids([ids]) if ids else None, set_metadata=set_md)
    left = _discarded_count(app, job_id) - left_before
    click.echo(f"Applied job {job_id}'s proposals to {n} sample{'s' if n != 1 else ''}."
               + (f" Left out {left} that changed or were deleted since the job ran (`labelblocks proposals show "
                  f"{job_id}` lists them; preview again for what they need now)." if left else ""))


@proposals_group.command("discard")
@click.argument("job_id", type=int)
@pass_app
def proposals_discard(app: AppContext, job_id: int) -> None:
    """Discard a job's proposals without applying them.

    \b
    Example:
      labelblocks proposals discard 3
    """
    import time

    from sqlalchemy import delete, insert, update

    from ..runner import job_state
    from ..store.schema import job_samples, jobs, proposals

    _job_row(app, job_id)
    pending = job_state(app.store, job_id).pending()
    with app.store.transaction() as conn:
        n = conn.execute(delete(proposals).where(proposals.c.job_id == job_id)).rowcount
        if pending:
            conn.execute(insert(job_samples), [{"job_id": job_id, "sample_id": sid, "status": "discarded"}
                                               for sid in pending])
        conn.execute(update(jobs).where(jobs.c.id == job_id).values(status="discarded", updated_at=time.time()))
    click.echo(f"Discarded {n} proposal{'s' if n != 1 else ''} of job {job_id}.")


def register(group: click.Group) -> None:
    for c in (actions_group, jobs_group, proposals_group):
        group.add_command(c)
