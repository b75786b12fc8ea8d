"""``labelblocks proposals ...``: show, apply or discard a job's proposed changes."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from ._util import AppContext, parse_ids, pass_app, print_json
from .jobs import get_job
from .render import changes_json, print_preview, record_order

if TYPE_CHECKING:
    from ..store.jobs import JobRecord


@click.group("proposals")
def proposals_group() -> None:
    """Review, apply or discard the proposed changes of a preview job."""


@proposals_group.command("show")
@click.argument("job_id", type=int)
@click.option("--sort-by", "sort_by", default=None, metavar="KEY",
              help="Samples by this score in the blocks' records, highest first (anomaly_score: outliers first).")
@click.option("--json", "as_json", is_flag=True, help="Print as the protocol's {proposedChanges: [...]} JSON.")
@pass_app
def proposals_show(app: AppContext, job_id: int, sort_by: str | None, as_json: bool) -> None:
    """Show what a job's proposals would change, per sample.

    \b
    Examples:
      labelblocks proposals show 3
      labelblocks proposals show 5 --sort-by anomaly_score
    """
    from ..store import proposals as proposal_store

    row = get_job(app.store, job_id)
    items = proposal_store.job_proposals(app.store, job_id)
    order = record_order(items, sort_by, job_id) if sort_by else None
    if as_json:
        # the protocol's listing, then what applying it writes (counted as apply counts)
        print_json({"proposedChanges": items, **changes_json(app.store, job_id)})
        return
    if print_preview(app.store, job_id, limit=1000, order=order) == 0:
        click.echo(_why_no_proposals(row))


def _why_no_proposals(row: JobRecord) -> str:
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
    from ..apply import apply_reviewed

    get_job(app.store, job_id)
    done = apply_reviewed(app.store, job_id, ids=parse_ids([ids]) if ids else None)
    n, left = done.applied, len(done.left_out)
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
    from ..store import jobs as job_store

    get_job(app.store, job_id)
    n = job_store.discard_job(app.store, job_id)
    click.echo(f"Discarded {n} proposal{'s' if n != 1 else ''} of job {job_id}.")


def register(group: click.Group) -> None:
    group.add_command(proposals_group)
