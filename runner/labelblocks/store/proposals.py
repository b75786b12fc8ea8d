"""A job's proposals as they are read: their texts and changes per sample and step, the
records blocks kept, a sample as a step sees it (the action's earlier contributions stripped, the
job's earlier steps overlaid) and which samples changed since their proposals were computed."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Connection, and_, select

from .. import provenance
from ..errors import NotFound
from ..model import Sample, SampleChange
from . import Store
from .dialect import run
from .schema import jobs, proposals

# the revision of a result that holds for every revision of its sample: the block never looked at
# the sample (sample revisions are timestamps, never negative)
ANY_REVISION = -1.0
# the job's samples in an id range that changed since its steps computed their proposals from
# them (a proposal without a revision, or one that holds for any, is never stale); a range scan
# of the job's proposals costs a third of looking up a list of ids
_STALE = ("SELECT DISTINCT p.sample_id FROM proposals AS p JOIN samples AS s ON s.id = p.sample_id "
          "WHERE p.job_id = ? AND p.sample_id BETWEEN ? AND ? "
          "AND p.revision IS NOT NULL AND p.revision != ? AND p.revision != s.updated_at")


# --- reading proposals ----------------------------------------------------------------------------


def change_json(ch: SampleChange) -> str:
    """A change as stored: its protocol JSON without unset fields."""
    return ch.model_dump_json(by_alias=True, exclude_none=True)


def load_change(text: str) -> SampleChange:
    return SampleChange.model_validate_json(text)


def proposal_texts(store: Store, job_id: int, ids: Sequence[int] | None = None,
                   max_step: int | None = None) -> dict[int, list[str]]:
    """The stored change texts of ``ids`` (all when None), per sample in step order; read
    as one range scan over the job's proposals."""
    sql = "SELECT sample_id, change FROM proposals WHERE job_id = ?"
    params: list[Any] = [job_id]
    if max_step is not None:
        sql += " AND step <= ?"
        params.append(max_step)
    if ids is not None:
        if not ids:
            return {}
        sql += " AND sample_id BETWEEN ? AND ?"
        params += [min(ids), max(ids)]
    wanted = set(ids) if ids is not None else None
    with store.engine.connect() as conn:
        rows = run(conn, sql + " ORDER BY sample_id, step", tuple(params)).cursor.fetchall()
    out: dict[int, list[str]] = {}
    for sid, text in rows:
        if wanted is None or sid in wanted:
            out.setdefault(sid, []).append(text)
    return out


def step_texts(store: Store, job_id: int, ids: Sequence[int]) -> dict[int, list[tuple[int, str]]]:
    """The stored change texts of ``ids``, per sample in step order, with their step."""
    if not ids:
        return {}
    wanted = set(ids)
    with store.engine.connect() as conn:
        rows = run(conn, "SELECT sample_id, step, change FROM proposals WHERE job_id = ? AND sample_id BETWEEN ? AND ? "
                         "ORDER BY sample_id, step", (job_id, min(ids), max(ids))).cursor.fetchall()
    out: dict[int, list[tuple[int, str]]] = {}
    for sid, step, text in rows:
        if sid in wanted:
            out.setdefault(sid, []).append((step, text))
    return out


def read_proposals(store: Store, job_id: int, ids: Sequence[int] | None = None,
                   max_step: int | None = None) -> dict[int, list[SampleChange]]:
    """A job's proposals of ``ids`` (all when None), per sample in step order."""
    return {sid: [load_change(t) for t in texts]
            for sid, texts in proposal_texts(store, job_id, ids, max_step).items()}


def read_records(store: Store, job_id: int, ids: Sequence[int]) -> dict[int, list[tuple[int, dict[str, Any]]]]:
    """The records the job's blocks kept for ``ids`` (scores, near misses): per sample,
    ``(step, record)`` in step order."""
    if not ids:
        return {}
    wanted = set(ids)
    out: dict[int, list[tuple[int, dict[str, Any]]]] = {}
    with store.engine.connect() as conn:
        rows = conn.execute(
            select(proposals.c.sample_id, proposals.c.step, proposals.c.record)
            .where(and_(proposals.c.job_id == job_id, proposals.c.record.is_not(None),
                        proposals.c.sample_id.between(min(ids), max(ids))))
            .order_by(proposals.c.sample_id, proposals.c.step))
        for sid, step, record in rows:
            if sid in wanted:
                out.setdefault(sid, []).append((step, json.loads(record)))
    return out


def job_proposals(store: Store, job_id: int, records: bool = True) -> list[dict[str, Any]]:
    """Every proposal of a job in the protocol's listing shape ``{sampleId, step,
    proposedChanges}`` (plus ``record`` where a block kept one, with ``records``), by sample
    then step."""
    out = []
    with store.engine.connect() as conn:
        for sid, step, change, record in conn.execute(
            select(proposals.c.sample_id, proposals.c.step, proposals.c.change, proposals.c.record)
            .where(proposals.c.job_id == job_id).order_by(proposals.c.sample_id, proposals.c.step)
        ):
            item = {"sampleId": sid, "step": step, "proposedChanges": json.loads(change)}
            if records and record:
                item["record"] = json.loads(record)
            out.append(item)
    return out


def overlay(store: Store, job_id: int, stored: Sequence[Sample], max_step: int | None = None) -> list[Sample]:
    """``stored`` samples without the job's action's earlier contributions (what it computes
    from: :func:`labelblocks.provenance.strip`), with the job's proposals up to ``max_step``
    (all when None) applied: what step ``max_step + 1`` of a chain sees."""
    stored = strip_action(store, job_id, stored)
    if max_step is not None and max_step < 1:
        return stored
    changes = read_proposals(store, job_id, [s.id for s in stored], max_step)
    out = []
    for s in stored:
        for ch in changes.get(s.id, []):
            s = s.with_change(ch)
        out.append(s)
    return out


def stripped(store: Store, job_id: int, stored: Sequence[Sample]) -> dict[int, provenance.Stripped]:
    """The samples of ``stored`` that hold contributions of the job's action, without them."""
    texts = store.provenance_texts([s.id for s in stored])
    if not texts:
        return {}
    with store.engine.connect() as conn:
        row = conn.execute(select(jobs.c.action, jobs.c.definition).where(jobs.c.id == job_id)).first()
    if row is None:
        raise NotFound(f"no job {job_id}")
    if not json.loads(row.definition).get("replacesEarlier", True):
        return {}
    action = str(row.action)
    return {s.id: provenance.strip(s, provenance.load(texts[s.id]), action)
            for s in stored if provenance.mentions(texts.get(s.id), action)}


def strip_action(store: Store, job_id: int, stored: Sequence[Sample]) -> list[Sample]:
    """``stored`` without the contributions of the job's action (what a run of it computes from)."""
    found = stripped(store, job_id, stored)
    return [found[s.id].sample if s.id in found else s for s in stored] if found else list(stored)


def stale_samples(store: Store, job_id: int, ids: Sequence[int], conn: Connection | None = None) -> set[int]:
    """Which of ``ids`` changed since job ``job_id`` proposed its changes for them. Applying
    such a proposal would overwrite what changed since (its fields hold whole values, such as
    all of the sample's metadata as the block saw it), so apply leaves these samples out."""
    if not ids:
        return set()
    if conn is None:
        with store.engine.connect() as own:
            return stale_samples(store, job_id, ids, own)
    found = {r[0] for r in run(conn, _STALE, (job_id, min(ids), max(ids), ANY_REVISION))}
    return found.intersection(ids) if found else found


