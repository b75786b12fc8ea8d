"""How the CLI shows changes: what a proposed change does to a sample, a job's proposals and
failures, and cost estimates."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import click

from ._util import print_json

if TYPE_CHECKING:
    from ..model import Sample, SampleChange
    from ..store import Store


def describe_change(before: Sample, change: SampleChange) -> list[str]:
    """Human-readable lines of what ``change`` does to ``before``."""
    lines: list[str] = []
    if change.label is not None and change.label != before.label:
        lines.append(f"label: {before.label or '-'} -> {change.label}")
    if change.is_disabled is not None and change.is_disabled != before.is_disabled:
        lines.append("disabled" if change.is_disabled else "enabled")
    if change.bounding_boxes is not None:
        old = {(b.x, b.y, b.width, b.height): b.label for b in before.bounding_boxes}
        new = {(b.x, b.y, b.width, b.height): b.label for b in change.bounding_boxes}
        added = [new[k] for k in new if k not in old]
        removed = [old[k] for k in old if k not in new]
        renamed = [f"{old[k]} -> {new[k]}" for k in new if k in old and old[k] != new[k]]
        if added:
            lines.append(f"boxes added: {len(added)} ({', '.join(_counts(added))})")
        if removed:
            lines.append(f"boxes removed: {len(removed)} ({', '.join(_counts(removed))})")
        if renamed:
            lines.append(f"boxes renamed: {', '.join(renamed)}")
    if change.structured_labels is not None:
        old_sl = [(x.start_index, x.end_index, x.label) for x in before.structured_labels]
        new_sl = [(x.start_index, x.end_index, x.label) for x in change.structured_labels]
        if old_sl != new_sl:
            lines.append(f"structured labels: {len(new_sl)} ranges ({', '.join(_counts([x[2] for x in new_sl]))})")
    if change.metadata is not None:
        for k, v in change.metadata.items():
            if before.metadata.get(k) != v:
                shown = v if len(v) <= 60 else v[:57] + "..."
                lines.append(f"metadata {k}: {before.metadata.get(k, '-')} -> {shown}")
        for k in before.metadata:
            if k not in change.metadata:
                lines.append(f"metadata {k}: removed")
    return lines


def _counts(labels: Sequence[str]) -> list[str]:
    c: dict[str, int] = {}
    for lab in labels:
        c[lab] = c.get(lab, 0) + 1
    return [f"{n}x {lab}" if n > 1 else lab for lab, n in c.items()]


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


def print_preview(store: Store, job_id: int, limit: int = 50, order: list[int] | None = None) -> int:
    """Prints up to ``limit`` samples' proposals and failures (by id, or in ``order`` then by
    id); returns how many samples have either."""
    from ..model import compose
    from ..store import jobs as job_store

    changes = job_store.read_proposals(store, job_id)
    errors = job_store.job_errors(store, job_id)
    ids = sorted(set(changes) | set(errors))
    if order is not None:
        first = [i for i in order if i in changes or i in errors]
        ids = first + [i for i in ids if i not in set(first)]
    samples = {s.id: s for s in store.get_samples(ids[:limit], missing_ok=True)} if ids else {}
    stale = job_store.stale_samples(store, job_id, ids[:limit])
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
