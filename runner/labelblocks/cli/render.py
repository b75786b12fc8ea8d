"""How the CLI shows changes: what a proposed change does to a sample, a job's proposals and
failures, and cost estimates."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import click

from ._util import print_json

if TYPE_CHECKING:
    from ..store import Store


def describe_total(total: dict[str, int]) -> str:
    """One line of what applying writes over a whole job (:func:`labelblocks.apply.total_diff`)."""
    parts = [f"{total['samples']} sample{'s' if total['samples'] != 1 else ''} change"]
    for key, word in (("boxesAdded", "boxes added"), ("boxesRemoved", "boxes removed"),
                      ("boxesRenamed", "boxes renamed"), ("labels", "labels changed"),
                      ("disabled", "disabled"), ("enabled", "enabled"),
                      ("structuredLabels", "structured labels replaced"), ("metadataValues", "metadata values")):
        if total.get(key):
            parts.append(f"{word}: {total[key]}")
    return "In all, applying writes: " + "; ".join(parts) + "."


def record_order(items: list[dict[str, Any]], key: str, job_id: int) -> list[int]:
    """The sample ids of a job's proposals (``job_proposals`` items, records included) by the
    score ``key`` in their blocks' records, highest first; ``items`` are sorted the same way."""
    from ..errors import UsageError

    score: dict[int, float] = {}
    for p in items:
        v = (p.get("record") or {}).get(key)
        if isinstance(v, int | float):
            score[p["sampleId"]] = max(float(v), score.get(p["sampleId"], float("-inf")))
    if not score:
        raise UsageError(f"--sort-by {key}: no block of job {job_id} recorded a score of that name")
    order = sorted({p["sampleId"] for p in items}, key=lambda sid: (-score.get(sid, float("-inf")), sid))
    rank = {sid: i for i, sid in enumerate(order)}
    items.sort(key=lambda p: (rank[p["sampleId"]], p["step"]))
    return order


def changes_json(store: Store, job_id: int) -> dict[str, Any]:
    """What applying the job's pending proposals writes, per sample and in all (``--json``)."""
    from ..apply import pending_finals, total_diff

    finals = pending_finals(store, job_id)
    return {"changes": [{"sampleId": f.before.id, **f.diff().to_json()} for f in finals if not f.diff().is_empty()],
            "total": total_diff(finals)}


def print_preview(store: Store, job_id: int, limit: int = 50, order: list[int] | None = None) -> int:
    """Prints up to ``limit`` samples' proposals and failures (by id, or in ``order`` then by
    id), then what applying writes in all; returns how many samples have either."""
    from ..apply import job_finals, total_diff
    from ..store import jobs as job_store
    from ..store import proposals as proposal_store

    proposed = sorted(proposal_store.proposal_texts(store, job_id))
    # each with the sample as it is now (a sample deleted since has none)
    finals = {f.before.id: f for f in job_finals(store, job_id, proposed)}
    errors = job_store.job_errors(store, job_id)
    ids = sorted(set(proposed) | set(errors))
    if order is not None:
        first = [i for i in order if i in finals or i in errors]
        ids = first + [i for i in ids if i not in set(first)]
    others = [sid for sid in ids[:limit] if sid not in finals]  # failed, or deleted since
    samples = {s.id: s for s in store.get_samples(others, missing_ok=True)} if others else {}
    samples.update((sid, f.before) for sid, f in finals.items())
    stale = proposal_store.stale_samples(store, job_id, sorted(finals))
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
        lines = finals[sid].diff().lines()
        click.echo(f"sample {sid} {s.filename}: " + ("no change" if not lines else lines[0]))
        for line in lines[1:]:
            click.echo(f"    {line}")
    if len(ids) > limit:
        click.echo(f"... and {len(ids) - limit} more: `labelblocks proposals show {job_id}`")
    pending = set(job_store.job_state(store, job_id).pending())
    if ids and pending:
        click.echo(describe_total(total_diff([f for sid, f in finals.items() if sid in pending and sid not in stale])))
    return len(ids)


def errors_json(errors: dict[int, tuple[int, str]]) -> list[dict[str, Any]]:
    return [{"sampleId": k, "step": v[0], "error": v[1]} for k, v in sorted(errors.items())]


def print_estimate(steps: list[dict[str, Any]], as_json: bool) -> None:
    if as_json:
        print_json({"steps": steps})
        return
    for st in steps:
        head = f"step {st['step']} ({st['block']}), {st['samples']} samples: "
        if st.get("estimate", True) is None:
            click.echo(head + "no paid requests")
        else:
            reused = f" ({st['reused']} samples' results reused from an earlier preview or run: not sent)" \
                if st.get("reused") else ""
            click.echo(head + f"{st['requests']} requests, about {st['promptTokens']} prompt tokens and "
                              f"{st['completionTokens']} completion tokens{reused}")
            if st.get("dependsOnEarlierSteps"):
                click.echo("    (counted on the samples as stored: this step reads what the earlier steps propose, "
                           "so the real count depends on their results)")
    click.echo("Nothing was sent. Answers already in the project's cache will not be paid again.")
