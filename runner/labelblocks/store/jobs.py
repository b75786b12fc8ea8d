"""Jobs: every statement on the jobs, job_samples, job_applied, job_steps and proposals tables.

A job is a preview or a run of an action over a fixed list of samples. Per sample it records
whether it was applied (``job_applied``, packed id lists), failed or discarded
(``job_samples``); per step its cache key (``job_steps``); per sample and step the proposed
change (``proposals``), with the revision of the sample it was computed from, so that a later
job of the same steps may reuse it and apply can tell a sample that changed since.

Dialect-specific statements (``json_each``, ``->>``, ``INSERT OR REPLACE``) live here only,
each behind one function.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import TypeAdapter
from sqlalchemy import and_, delete, insert, select, update

from ..model import SampleChange, compose
from . import PreparedChanges, Store
from .dialect import Dialects, run, upsert
from .packed import pack_ids, unpack_ids
from .proposals import ANY_REVISION, change_json, load_change, stale_samples
from .schema import job_applied, job_samples, job_steps, jobs, proposals, step_inputs

# (sample id, change, record JSON, revision) rows, serialised in one call for SQLite's json_each
# (a float goes through JSON exactly: tests/test_runner.py checks the round trip)
# (a revision of None: ANY_REVISION)
ROWS = TypeAdapter(list[tuple[int, SampleChange, str | None, float | None]])
_UPSERT_PROPOSAL = " ON CONFLICT (job_id, sample_id, step) DO UPDATE SET change = excluded.change, " \
    "record = excluded.record, revision = excluded.revision"
_INSERT_ROWS = Dialects(
    "INSERT OR REPLACE INTO proposals (job_id, sample_id, step, change, record, revision) "
    "SELECT ?, value->>0, ?, value->1, value->>2, coalesce(value->>3, ?) FROM json_each(?)",
    "INSERT INTO proposals (job_id, sample_id, step, change, record, revision) "
    "SELECT ?, CAST(value->>0 AS BIGINT), ?, CAST(value->1 AS TEXT), value->>2, "
    "coalesce(CAST(value->>3 AS DOUBLE PRECISION), ?) FROM json_array_elements(CAST(? AS json)) AS value"
    + _UPSERT_PROPOSAL)
STALE_ERROR = ("the sample changed since job {job} proposed this change, which would overwrite that: "
               "left as it is (preview again to see the change for the sample as it is now)")
INSERT_TEXT_ROWS = Dialects(  # texts as strings
    "INSERT OR REPLACE INTO proposals (job_id, sample_id, step, change, record, revision) "
    "SELECT ?, value->>0, ?, value->>1, value->>2, value->>3 FROM json_each(?)",
    "INSERT INTO proposals (job_id, sample_id, step, change, record, revision) "
    "SELECT ?, CAST(value->>0 AS BIGINT), ?, value->>1, value->>2, CAST(value->>3 AS DOUBLE PRECISION) "
    "FROM json_array_elements(CAST(? AS json)) AS value" + _UPSERT_PROPOSAL)
_INSERT_TEXTS = Dialects(
    "INSERT OR REPLACE INTO proposals (job_id, sample_id, step, change, record, revision) VALUES (?, ?, ?, ?, ?, ?)",
    "INSERT INTO proposals (job_id, sample_id, step, change, record, revision) VALUES (?, ?, ?, ?, ?, ?)"
    + _UPSERT_PROPOSAL)
_UPSERT_JOB_SAMPLE = " ON CONFLICT (job_id, sample_id) DO UPDATE SET status = excluded.status, " \
    "failed_step = excluded.failed_step, error = excluded.error"
_INSERT_FAILED = Dialects(
    "INSERT OR REPLACE INTO job_samples (job_id, sample_id, status, failed_step, error) VALUES (?, ?, 'failed', ?, ?)",
    "INSERT INTO job_samples (job_id, sample_id, status, failed_step, error) VALUES (?, ?, 'failed', ?, ?)"
    + _UPSERT_JOB_SAMPLE)
_INSERT_DISCARDED = Dialects(
    "INSERT OR REPLACE INTO job_samples (job_id, sample_id, status, failed_step, error) "
    "VALUES (?, ?, 'discarded', NULL, ?)",
    "INSERT INTO job_samples (job_id, sample_id, status, failed_step, error) VALUES (?, ?, 'discarded', NULL, ?)"
    + _UPSERT_JOB_SAMPLE)
_COUNT_ALIVE = Dialects(
    "SELECT count(*) FROM samples WHERE id IN (SELECT value FROM json_each(?))",
    "SELECT count(*) FROM samples WHERE id IN (SELECT CAST(json_array_elements_text(CAST(? AS json)) AS BIGINT))")

# a pending result of a step: (sample id, change JSON, record JSON, revision)
TextRow = tuple[int, str, str | None, float | None]


# --- jobs -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class JobRecord:
    """A job as stored: what ran (``definition``: the action with its steps resolved), its
    status, its usage counters and its error."""

    id: int
    action: str
    kind: str  # preview | run
    status: str  # running | interrupted | failed | completed | discarded
    error: str | None
    definition: dict[str, Any]
    usage: dict[str, float]
    pid: int | None
    created_at: float
    updated_at: float

    @property
    def step_count(self) -> int:
        return len(self.definition.get("steps", []))


def _record(row: Any) -> JobRecord:
    return JobRecord(id=row.id, action=row.action, kind=row.kind, status=row.status, error=row.error,
                     definition=json.loads(row.definition), usage=json.loads(row.usage or "{}"), pid=row.pid,
                     created_at=row.created_at, updated_at=row.updated_at)


_JOB_COLUMNS = (jobs.c.id, jobs.c.action, jobs.c.kind, jobs.c.status, jobs.c.error, jobs.c.definition, jobs.c.usage,
                jobs.c.pid, jobs.c.created_at, jobs.c.updated_at)


def get_job(store: Store, job_id: int) -> JobRecord | None:
    """The job ``job_id``, or None when there is none."""
    with store.engine.connect() as conn:
        row = conn.execute(select(*_JOB_COLUMNS).where(jobs.c.id == job_id)).first()
    return None if row is None else _record(row)


def list_jobs(store: Store) -> list[JobRecord]:
    """Every job, newest first."""
    with store.engine.connect() as conn:
        rows = conn.execute(select(*_JOB_COLUMNS).order_by(jobs.c.id.desc())).all()
    return [_record(r) for r in rows]


def create_job(store: Store, action: str, kind: str, definition: Mapping[str, Any], definition_hash: str,
               ids: Sequence[int]) -> int:
    """A new running job of ``action`` over the samples ``ids``; returns its id."""
    now = time.time()
    with store.transaction() as conn:
        job_id = conn.execute(
            insert(jobs).values(action=action, kind=kind, status="running", definition=json.dumps(definition),
                                definition_hash=definition_hash, pid=os.getpid(), usage="{}",
                                created_at=now, updated_at=now, sample_ids=pack_ids(sorted(ids)))
            .returning(jobs.c.id)
        ).scalar_one()
    return int(job_id)


def unfinished_run(store: Store, action: str, definition_hash: str) -> JobRecord | None:
    """The newest run of ``action`` with this definition that did not complete, if any."""
    with store.engine.connect() as conn:
        row = conn.execute(
            select(*_JOB_COLUMNS)
            .where(and_(jobs.c.action == action, jobs.c.definition_hash == definition_hash,
                        jobs.c.status.in_(["running", "interrupted", "failed"])))
            .order_by(jobs.c.id.desc())
        ).first()
    return None if row is None else _record(row)


def set_job_status(store: Store, job_id: int, status: str, error: str | None = None) -> None:
    with store.transaction() as conn:
        conn.execute(update(jobs).where(jobs.c.id == job_id)
                     .values(status=status, error=error, updated_at=time.time(), pid=os.getpid()))


def add_job_usage(store: Store, job_id: int, usage: Mapping[str, float]) -> None:
    """Add ``usage`` (requests, tokens, ...) to the job's counters."""
    if not usage:
        return
    with store.transaction() as conn:
        cur = json.loads(conn.execute(select(jobs.c.usage).where(jobs.c.id == job_id)).scalar_one() or "{}")
        for k, v in usage.items():
            cur[k] = cur.get(k, 0) + v
        conn.execute(update(jobs).where(jobs.c.id == job_id).values(usage=json.dumps(cur), updated_at=time.time()))


def job_usage(store: Store, job_id: int) -> dict[str, float]:
    with store.engine.connect() as conn:
        return dict(json.loads(conn.execute(select(jobs.c.usage).where(jobs.c.id == job_id)).scalar_one() or "{}"))


# --- the job's samples --------------------------------------------------------------------------


@dataclass
class JobState:
    """Where each of a job's samples stands: pending until applied, failed or discarded."""

    ids: list[int]
    applied: set[int]
    failed: set[int]
    discarded: set[int]
    skipped: set[int] = field(default_factory=set)  # no step of the job operates on them (audio for image blocks)

    def pending(self) -> list[int]:
        done = self.applied | self.failed | self.discarded | self.skipped
        return [i for i in self.ids if i not in done] if done else list(self.ids)

    def counts(self) -> dict[str, int]:
        c = {"pending": len(self.ids) - len(self.applied) - len(self.failed) - len(self.discarded) - len(self.skipped),
             "applied": len(self.applied), "failed": len(self.failed), "discarded": len(self.discarded),
             "skipped": len(self.skipped)}
        return {k: v for k, v in c.items() if v}


def job_state(store: Store, job_id: int) -> JobState:
    with store.engine.connect() as conn:
        packed = conn.execute(select(jobs.c.sample_ids).where(jobs.c.id == job_id)).scalar_one_or_none()
        applied: set[int] = set()
        for (blob,) in conn.execute(select(job_applied.c.sample_ids).where(job_applied.c.job_id == job_id)):
            applied.update(unpack_ids(blob))
        by_status: dict[str, set[int]] = {"failed": set(), "discarded": set(), "skipped": set()}
        for sid, status in conn.execute(select(job_samples.c.sample_id, job_samples.c.status)
                                        .where(job_samples.c.job_id == job_id)):
            by_status.get(status, by_status["discarded"]).add(sid)
    return JobState(unpack_ids(packed), applied, by_status["failed"], by_status["discarded"], by_status["skipped"])


def skip_samples(store: Store, job_id: int, reasons: Mapping[int, str]) -> None:
    """Mark samples of the job that no step operates on as skipped, with why: neither applied
    nor failed, and left as they are."""
    if reasons:
        with store.transaction() as conn:
            conn.execute(insert(job_samples), [{"job_id": job_id, "sample_id": sid, "status": "skipped", "error": why}
                                               for sid, why in reasons.items()])


def job_errors(store: Store, job_id: int) -> dict[int, tuple[int, str]]:
    """The job's failed samples: {sample id: (step, error)}."""
    with store.engine.connect() as conn:
        return {r[0]: (r[1], r[2]) for r in conn.execute(
            select(job_samples.c.sample_id, job_samples.c.failed_step, job_samples.c.error)
            .where(and_(job_samples.c.job_id == job_id, job_samples.c.status == "failed")))}


def left_out(store: Store, job_id: int) -> tuple[list[int], list[int]]:
    """The job's samples its apply left out: (changed since the job computed them and still
    there, deleted since), each in id order."""
    changed: list[int] = []
    deleted: list[int] = []
    with store.engine.connect() as conn:
        rows = run(conn, "SELECT j.sample_id, s.id IS NOT NULL FROM job_samples j "
                         "LEFT JOIN samples s ON s.id = j.sample_id "
                         "WHERE j.job_id = ? AND j.status = 'discarded' ORDER BY j.sample_id", (job_id,))
        for row in rows:
            (changed if row[1] else deleted).append(int(row[0]))
    return changed, deleted


def discarded_count(store: Store, job_id: int) -> int:
    """How many of the job's samples were left out (discarded, or deleted or changed before apply)."""
    with store.engine.connect() as conn:
        return int(run(conn, "SELECT count(*) FROM job_samples WHERE job_id = ? AND status = 'discarded'",
                                        (job_id,)).scalar_one())


def discard_job(store: Store, job_id: int) -> int:
    """Discard the job's proposals and its pending samples; returns how many proposals were dropped."""
    pending = job_state(store, job_id).pending()
    with store.transaction() as conn:
        n = conn.execute(delete(proposals).where(proposals.c.job_id == job_id)).rowcount
        if pending:
            conn.execute(insert(job_samples), [{"job_id": job_id, "sample_id": sid, "status": "discarded"}
                                               for sid in pending])
        conn.execute(update(jobs).where(jobs.c.id == job_id).values(status="discarded", updated_at=time.time()))
    return int(n)


# --- steps and their results --------------------------------------------------------------------


def record_step(store: Store, job_id: int, step: int, cache_key: str) -> None:
    """Remember step ``step``'s cache key: its results are reusable by later jobs of that key."""
    with store.transaction() as conn:
        upsert(conn, job_steps, [{"job_id": job_id, "step": step, "cache_key": cache_key}])


def has_proposals(store: Store, job_id: int) -> bool:
    """Whether the job has any proposal."""
    with store.engine.connect() as conn:
        return conn.execute(select(proposals.c.sample_id).where(proposals.c.job_id == job_id).limit(1)).first() \
            is not None


def proposed_ids(store: Store, job_id: int, step: int) -> set[int]:
    """The samples with a proposal of ``step`` in the job."""
    with store.engine.connect() as conn:
        return {r[0] for r in conn.execute(select(proposals.c.sample_id)
                                           .where(and_(proposals.c.job_id == job_id, proposals.c.step == step)))}


def cached_results(store: Store, key: str, revs: Mapping[int, float]) -> dict[int, tuple[str, str | None]]:
    """Changes that earlier jobs' steps of cache key ``key`` computed from these revisions
    of these samples: {sample id: (change, record)}."""
    out: dict[int, tuple[str, str | None]] = {}
    if not revs:
        return out
    with store.engine.connect() as conn:
        steps = conn.execute(select(job_steps.c.job_id, job_steps.c.step).where(job_steps.c.cache_key == key)).all()
        lo, hi = min(revs), max(revs)
        for job_id, step in steps:  # each a range of the proposals' primary key
            cond = [proposals.c.job_id == job_id, proposals.c.step == step, proposals.c.revision.is_not(None)]
            cols = (proposals.c.sample_id, proposals.c.revision, proposals.c.change, proposals.c.record)
            if hi - lo < 4 * len(revs):
                chunks: list[Any] = [proposals.c.sample_id.between(lo, hi)]
            else:
                ids = sorted(revs)
                chunks = [proposals.c.sample_id.in_(ids[i : i + 500]) for i in range(0, len(ids), 500)]
            for chunk in chunks:
                for sid, rev, change, record in conn.execute(select(*cols).where(and_(*cond, chunk))):
                    if sid in revs and (rev == ANY_REVISION or revs[sid] == rev):
                        out[sid] = (change, record)
    return out


def results_for_inputs(store: Store, step_key: str, keys: Mapping[int, str]) -> dict[int, tuple[str, str | None]]:
    """Changes that earlier jobs' steps of ``step_key`` (a block, version and parameters)
    computed from the same read fields (``keys``: sample id -> input key): {sample id:
    (change, record)}. A block's result depends on what it reads, not on which sample it was."""
    out: dict[int, tuple[str, str | None]] = {}
    if not keys:
        return out
    wanted: dict[str, list[int]] = {}
    for sid, key in keys.items():
        wanted.setdefault(key, []).append(sid)
    i, p = step_inputs.c, proposals.c
    with store.engine.connect() as conn:
        found: dict[str, tuple[str, str | None]] = {}
        for chunk in [sorted(wanted)[n : n + 500] for n in range(0, len(wanted), 500)]:
            rows = conn.execute(select(i.input_key, p.change, p.record).select_from(
                step_inputs.join(proposals, and_(p.job_id == i.job_id, p.step == i.step, p.sample_id == i.sample_id)))
                .where(and_(i.step_key == step_key, i.input_key.in_(chunk))).order_by(i.job_id))
            for key, change, record in rows:
                found[key] = (change, record)  # the newest job's, last
    for key, (change, record) in found.items():
        for sid in wanted[key]:
            out[sid] = (change, record)
    return out


def write_step_results(store: Store, job_id: int, step: int, computed: Sequence[str], texts: Sequence[TextRow],
                       failed: Sequence[tuple[int, str]], inputs: Sequence[tuple[str, int, str]] = ()) -> None:
    """Write a step's results in one transaction: ``computed``, JSON arrays of :data:`ROWS`
    without their brackets (written by one statement over their JSON), change ``texts``,
    ``failed`` samples with their errors, and ``inputs`` (step key, sample id, input key) of
    the samples a block with declared reads computed."""
    with store.transaction() as conn:
        if inputs:
            conn.execute(insert(step_inputs), [{"step_key": k, "input_key": ik, "job_id": job_id, "step": step,
                                                "sample_id": sid} for k, sid, ik in inputs])
        if computed:
            run(conn, _INSERT_ROWS, (job_id, step, ANY_REVISION, "[" + ",".join(computed) + "]"))
        if texts:  # one statement too: no row-by-row round trips through the GIL
            run(conn, INSERT_TEXT_ROWS, (job_id, step, json.dumps(list(texts))))
        if failed:
            run(conn, _INSERT_FAILED, [(job_id, sid, step, error) for sid, error in failed])


def stage_proposal(store: Store, job_id: int, sample_id: int, step: int, change: SampleChange,
                   merge: bool = False, revision: float | None = None) -> None:
    """Store ``change`` as the job's proposal for the sample at ``step`` (replacing it; with
    ``merge``, only the fields ``change`` sets replace those of the stored proposal).
    ``revision``: the sample's revision the change was computed from, when it may be reused."""
    with store.transaction() as conn:
        if merge:
            row = conn.execute(select(proposals.c.change).where(and_(
                proposals.c.job_id == job_id, proposals.c.sample_id == sample_id, proposals.c.step == step))).first()
            if row is not None:
                change = compose([load_change(row[0]), change])
        run(conn, _INSERT_TEXTS, (job_id, sample_id, step, change_json(change), None, revision))


# --- applying -------------------------------------------------------------------------------------


def apply_chunk(store: Store, job_id: int, chunk: list[int], writes: list[tuple[int, SampleChange]],
                prepared: PreparedChanges, records: Mapping[int, str | None] | None = None) -> int:
    """Apply one chunk's prepared changes in one transaction, with the samples' status:
    samples deleted or changed since the job proposed are left out (discarded, with why).
    Returns how many samples were applied."""
    with store.transaction() as conn:
        # under the write lock: none of the samples disappears or changes now
        alive_n = run(conn, _COUNT_ALIVE, (json.dumps(chunk),)).scalar_one()
        stale = stale_samples(store, job_id, chunk, conn)
        if alive_n != len(chunk) or prepared.count != len(writes) or stale:  # deleted or changed since
            alive = store.revisions(chunk, conn)
            left_out = [(job_id, i, "the sample was deleted") for i in chunk if i not in alive]
            left_out += [(job_id, i, STALE_ERROR.format(job=job_id)) for i in sorted(stale)]
            run(conn, _INSERT_DISCARDED, left_out)
            keep = alive.keys() - stale
            chunk = [sid for sid in chunk if sid in keep]
            prepared = store.prepare_changes([it for it in writes if it[0] in keep], conn, records=records)
        store.write_changes(conn, prepared)
        if chunk:  # after the writes, in their transaction: every sample written has updated_at <= it
            conn.execute(insert(job_applied).values(job_id=job_id, sample_ids=pack_ids(chunk), applied_at=time.time()))
    return len(chunk)


def unchanged_since_applied(store: Store, action: str, definition_hash: str, ids: Sequence[int]) -> set[int]:
    """The samples among ``ids`` that a run of ``action`` with this definition applied (or a
    preview of it, applied), and that nothing has written since: running the same action on
    them again changes nothing."""
    applied_at: dict[int, float] = {}
    with store.engine.connect() as conn:
        rows = conn.execute(
            select(job_applied.c.sample_ids, job_applied.c.applied_at)
            .join(jobs, jobs.c.id == job_applied.c.job_id)
            .where(and_(jobs.c.action == action, jobs.c.definition_hash == definition_hash,
                        job_applied.c.applied_at.is_not(None))))
        for packed, at in rows:
            for sid in unpack_ids(packed):
                if at > applied_at.get(sid, 0.0):
                    applied_at[sid] = at
    if not applied_at:
        return set()
    revisions = store.revisions([sid for sid in ids if sid in applied_at])
    return {sid for sid, rev in revisions.items() if rev <= applied_at[sid]}


def job_sample_ids(store: Store, job_id: int) -> list[int]:
    """The samples the job was created over, in id order."""
    with store.engine.connect() as conn:
        packed = conn.execute(select(jobs.c.sample_ids).where(jobs.c.id == job_id)).scalar_one_or_none()
    return unpack_ids(packed)


def job_log_path(store: Store, job_id: int) -> Path:
    """Where the job's external blocks' output goes (secrets redacted)."""
    return store.root / "logs" / f"job-{job_id}.log"
