"""``labelblocks jobs ...``: list, show and log the jobs of previews and runs."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import click

from ..errors import NotFound
from ._util import AppContext, pass_app, print_json
from .render import describe_total, errors_json

if TYPE_CHECKING:
    from ..store import Store
    from ..store.jobs import JobRecord


@click.group("jobs")
def jobs_group() -> None:
    """Preview and run jobs."""


def get_job(store: Store, job_id: int) -> JobRecord:
    """The job, or NotFound with where to look."""
    from ..store import jobs as job_store

    job = job_store.get_job(store, job_id)
    if job is None:
        raise NotFound(f"no job {job_id}: see `labelblocks jobs list`")
    return job


def _job_json(store: Store, job: JobRecord) -> dict[str, Any]:
    from ..store import jobs as job_store

    state = job_store.job_state(store, job.id)
    return {"id": job.id, "action": job.action, "kind": job.kind, "status": job.status,
            "samples": len(state.ids), "counts": state.counts(), "usage": job.usage,
            "error": job.error, "definition": job.definition, "created": job.created_at,
            "updated": job.updated_at}


@jobs_group.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@pass_app
def jobs_list(app: AppContext, as_json: bool) -> None:
    """List jobs, newest first.

    \b
    Example:
      labelblocks jobs list
    """
    from ..store import jobs as job_store

    data = [_job_json(app.store, j) for j in job_store.list_jobs(app.store)]
    if as_json:
        print_json(data)
        return
    if not data:
        click.echo("No jobs yet.")
    for j in data:
        stopped = j["status"] in ("failed", "interrupted")
        counts = ", ".join(f"{n} {'not reached' if s == 'pending' and stopped else s}"
                           for s, n in sorted(j["counts"].items()))
        if stopped and j["kind"] == "run":
            counts += f" (`labelblocks actions run {j['action']}` resumes it)"
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
    from ..apply import pending_finals, total_diff
    from ..store import jobs as job_store

    j = _job_json(app.store, get_job(app.store, job_id))
    errors = job_store.job_errors(app.store, job_id)
    # what applying its pending proposals writes (the same count as `proposals show` and apply)
    pending = j["kind"] == "preview" and j["status"] == "completed" and j["counts"].get("pending")
    total = total_diff(pending_finals(app.store, job_id)) if pending else None
    if as_json:
        j["failures"] = errors_json(errors)
        if total is not None:
            j["pendingChanges"] = total
        print_json(j)
        return
    click.echo(f"job {j['id']}: {j['kind']} of action {j['action']} — {j['status']}")
    for s in j["definition"].get("steps", []):
        click.echo(f"  step {s['step']}: {s['block']} {s['version']} {json.dumps(s['parameters'])}")
    click.echo("  samples: " + ", ".join(f"{n} {s}" for s, n in sorted(j["counts"].items())))
    if total is not None:
        click.echo("  " + describe_total(total).replace("In all, applying writes", "applying its proposals writes"))
    if j["usage"]:
        click.echo("  usage: " + ", ".join(f"{k}={v:g}" for k, v in sorted(j["usage"].items())))
    if j["error"]:
        click.echo(f"  error: {j['error']}")
    if job_store.job_log_path(app.store, job_id).exists():
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
    from ..store import jobs as job_store

    get_job(app.store, job_id)
    path = job_store.job_log_path(app.store, job_id)
    if not path.exists():
        click.echo(f"Job {job_id} has no log: only external blocks write one.", err=True)
        return
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    for line in lines[-tail:] if tail else lines:
        click.echo(line)


def register(group: click.Group) -> None:
    group.add_command(jobs_group)
