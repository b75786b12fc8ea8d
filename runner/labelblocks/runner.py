"""Running actions: preview (stage proposals of a job) and run (label all, applying).

Data flow for a job::

    select samples ─► for each step k: read the samples with steps 1..k-1's proposals of this
    job applied ─► block.label(batch) ─► store step k's proposals (a background thread writes
    them, every WRITE_ROWS samples, while the block computes the next batches)
    ─► preview: stop here        run: apply each sample's composed change atomically

Progress is recorded per sample and step, so a job killed at any moment resumes where it
stopped: finished (sample, step) pairs are never recomputed and a sample is applied whole or
not at all. Results are cached by (the sample's stored state, the chain of steps up to k):
a run after a preview of the same steps reuses the preview's results.
"""

from __future__ import annotations

import functools
import gc
import hashlib
import json
import os
import queue
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from itertools import repeat
from pathlib import Path
from typing import Any, BinaryIO

from pydantic import TypeAdapter
from sqlalchemy import and_, insert, select, update

from .actions import Action, validate_steps
from .blocks import Block, BlockContext, SampleFailure, SampleInput
from .errors import BlockError, InvalidInput, LabelblocksError, NotFound
from .external import ExternalBlock, pid_alive, run_external_step
from .model import Sample, SampleChange, parse_change
from .parameters import ResolvedParameters
from .plugins import BlockRegistry, RegisteredBlock
from .secrets import redact, resolve_secrets
from .store import PreparedChanges, Store
from .store.schema import job_applied, job_samples, job_steps, jobs, pack_ids, proposals, unpack_ids

ProgressFn = Callable[[str, int, int], None]  # (phase, done, total)

WRITE_ROWS = 10_000  # a step's results are committed at least every this many samples
WRITE_SECONDS = 1.0  # ... or this often, whichever comes first (a kill loses about this much work, plus the write in flight)
APPLY_ROWS = 20_000  # samples applied per transaction
REVISIONS_AHEAD = 20_000  # sample revisions (for cache keys) are read this many at a time
GC_YOUNG = 20_000  # allocations between collections of the youngest generation during a step or apply
SWITCH_INTERVAL = 0.001  # seconds a thread may hold the GIL while another waits, during a step or apply


class TooManyFailures(LabelblocksError):
    pass


class JobFailed(LabelblocksError):
    """A job stopped on an unexpected error (recorded in the job); its cause is chained."""


@dataclass
class StepPlan:
    index: int  # 1-based
    block: RegisteredBlock
    resolved: ResolvedParameters
    secrets: dict[str, str]
    key: str  # identifies block, version and parameters

    def describe(self) -> dict[str, Any]:
        return {"step": self.index, "block": self.block.name, "version": self.block.version,
                "parameters": self.resolved.for_record()}


@dataclass
class JobSummary:
    job_id: int
    kind: str
    status: str
    total: int
    applied: int = 0
    failed: int = 0
    computed: int = 0
    cached: int = 0
    resumed: bool = False
    usage: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"jobId": self.job_id, "kind": self.kind, "status": self.status, "samples": self.total,
                "applied": self.applied, "failed": self.failed, "computed": self.computed, "cached": self.cached,
                "resumed": self.resumed, "usage": self.usage}


@dataclass
class JobState:
    """Where each of a job's samples stands: pending until applied, failed or discarded."""

    ids: list[int]
    applied: set[int]
    failed: set[int]
    discarded: set[int]

    def pending(self) -> list[int]:
        done = self.applied | self.failed | self.discarded
        return [i for i in self.ids if i not in done] if done else list(self.ids)

    def counts(self) -> dict[str, int]:
        c = {"pending": len(self.ids) - len(self.applied) - len(self.failed) - len(self.discarded),
             "applied": len(self.applied), "failed": len(self.failed), "discarded": len(self.discarded)}
        return {k: v for k, v in c.items() if v}


def job_state(store: Store, job_id: int) -> JobState:
    with store.engine.connect() as conn:
        packed = conn.execute(select(jobs.c.sample_ids).where(jobs.c.id == job_id)).scalar_one_or_none()
        applied: set[int] = set()
        for (blob,) in conn.execute(select(job_applied.c.sample_ids).where(job_applied.c.job_id == job_id)):
            applied.update(unpack_ids(blob))
        failed: set[int] = set()
        discarded: set[int] = set()
        for sid, status in conn.execute(select(job_samples.c.sample_id, job_samples.c.status)
                                        .where(job_samples.c.job_id == job_id)):
            (failed if status == "failed" else discarded).add(sid)
    return JobState(unpack_ids(packed), applied, failed, discarded)


@dataclass
class _Tuning:
    """The steps running in this process, and the settings from before the first of them."""

    running: int = 0
    saved: tuple[tuple[int, ...], float] = ((), 0.0)


_tuning = _Tuning()
_tuning_lock = threading.Lock()


@contextmanager
def _batch_gc() -> Iterator[None]:
    """Tune the interpreter for a step or an apply, restoring its settings after.

    The garbage collector's youngest generation is collected every GC_YOUNG allocations
    instead of CPython's 700. A batch's objects (inputs, changes, rows) die with the batch.
    Collected every 700 allocations, most of them are still alive, get promoted, and are
    scanned again by the older generations' collections, which also scan a model block's
    long-lived objects: that doubled the time of a block that only builds one change per
    sample (benchmarks/runner.py). Cycles are still collected.

    The GIL switch interval drops from 5 ms to SWITCH_INTERVAL: the background writer
    (_Writer) needs the GIL for a moment between its SQLite calls, and would otherwise wait
    up to 5 ms each time while the block computes.

    Both settings are process-wide: steps running at once in several threads share them; the
    first to start saves the settings, and the last to end restores them."""
    with _tuning_lock:
        if _tuning.running == 0:
            old, old_switch = gc.get_threshold(), sys.getswitchinterval()
            gc.set_threshold(max(old[0], GC_YOUNG), *old[1:])
            sys.setswitchinterval(min(old_switch, SWITCH_INTERVAL))
            _tuning.saved = (old, old_switch)
        _tuning.running += 1
    try:
        yield
    finally:
        with _tuning_lock:
            _tuning.running -= 1
            if _tuning.running == 0:
                gc.set_threshold(*_tuning.saved[0])
                sys.setswitchinterval(_tuning.saved[1])


def _sha(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def compose(changes: Sequence[SampleChange]) -> SampleChange:
    """The net change of chained steps: each later step's fields replace earlier ones (step k
    saw steps 1..k-1 applied, so its whole-field values already include theirs)."""
    out = SampleChange()
    for ch in changes:
        for f in ("label", "is_disabled", "bounding_boxes", "metadata", "structured_labels"):
            v = getattr(ch, f)
            if v is not None:
                setattr(out, f, v)
    return out


def _change_json(ch: SampleChange) -> str:
    return ch.model_dump_json(by_alias=True, exclude_none=True)


# (sample id, change, record JSON, revision) rows, serialised in one call for SQLite's json_each
# (a float goes through JSON exactly: tests/test_runner.py checks the round trip)
# (a revision of None: ANY_REVISION, see _run_step)
_ROWS = TypeAdapter(list[tuple[int, SampleChange, str | None, float | None]])
_INSERT_ROWS = ("INSERT OR REPLACE INTO proposals (job_id, sample_id, step, change, record, revision) "
                "SELECT ?, value->>0, ?, value->1, value->>2, coalesce(value->>3, ?) FROM json_each(?)")
# the revision of a result that holds for every revision of its sample: the block never looked at
# the sample (sample revisions are timestamps, never negative)
ANY_REVISION = -1.0
STALE_ERROR = ("the sample changed since job {job} proposed this change, which would overwrite that: "
               "left as it is (preview again to see the change for the sample as it is now)")
_INSERT_TEXT_ROWS = ("INSERT OR REPLACE INTO proposals (job_id, sample_id, step, change, record, revision) "
                     "SELECT ?, value->>0, ?, value->>1, value->>2, value->>3 FROM json_each(?)")  # texts as strings
_INSERT_TEXTS = ("INSERT OR REPLACE INTO proposals (job_id, sample_id, step, change, record, revision) "
                 "VALUES (?, ?, ?, ?, ?, ?)")


# the job's samples in an id range that changed since its steps computed their proposals from
# them (a proposal without a revision, or one that holds for any, is never stale); a range scan
# of the job's proposals costs a third of looking up a list of ids
_STALE = ("SELECT DISTINCT p.sample_id FROM proposals AS p JOIN samples AS s ON s.id = p.sample_id "
          "WHERE p.job_id = ? AND p.sample_id BETWEEN ? AND ? "
          "AND p.revision IS NOT NULL AND p.revision != ? AND p.revision != s.updated_at")


def stale_samples(conn: Any, job_id: int, ids: Sequence[int]) -> set[int]:
    """Which of ``ids`` changed since job ``job_id`` proposed its changes for them. Applying
    such a proposal would overwrite what changed since (its fields hold whole values, such as
    all of the sample's metadata as the block saw it), so apply leaves these samples out."""
    if not ids:
        return set()
    found = {r[0] for r in conn.exec_driver_sql(_STALE, (job_id, min(ids), max(ids), ANY_REVISION))}
    return found.intersection(ids) if found else found


def _load_change(text: str) -> SampleChange:
    return SampleChange.model_validate_json(text)


def read_proposals(store: Store, job_id: int, ids: Sequence[int] | None = None,
                   max_step: int | None = None) -> dict[int, list[SampleChange]]:
    """A job's proposals of ``ids`` (all when None), per sample in step order."""
    return {sid: [_load_change(t) for t in texts]
            for sid, texts in _proposal_texts(store, job_id, ids, max_step).items()}


def _proposal_texts(store: Store, job_id: int, ids: Sequence[int] | None = None,
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
        rows = conn.exec_driver_sql(sql + " ORDER BY sample_id, step", tuple(params)).cursor.fetchall()
    out: dict[int, list[str]] = {}
    for sid, text in rows:
        if wanted is None or sid in wanted:
            out.setdefault(sid, []).append(text)
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
    """``stored`` samples with the job's proposals up to ``max_step`` (all when None) applied:
    what step ``max_step + 1`` of a chain sees."""
    if max_step is not None and max_step < 1:
        return list(stored)
    changes = read_proposals(store, job_id, [s.id for s in stored], max_step)
    out = []
    for s in stored:
        for ch in changes.get(s.id, []):
            s = s.with_change(ch)
        out.append(s)
    return out


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
                change = compose([_load_change(row[0]), change])
        conn.exec_driver_sql(_INSERT_TEXTS, (job_id, sample_id, step, _change_json(change), None, revision))


@dataclass
class _Pending:
    """A step's results not yet written: changes a block computed (serialised at once, so that
    the objects do not pile up for the garbage collector), change texts (cached or from an
    external block), and failures."""

    computed: list[str] = field(default_factory=list)  # JSON arrays of _ROWS without their brackets
    n_computed: int = 0
    texts: list[tuple[int, str, str | None, float | None]] = field(default_factory=list)
    failed: list[tuple[int, str]] = field(default_factory=list)

    def add_computed(self, rows: list[tuple[int, SampleChange, str | None, float | None]], secrets: list[str]) -> None:
        if not rows:
            return
        payload = _ROWS.dump_json(rows, by_alias=True, exclude_none=True).decode()
        if secrets and redact(payload, secrets) != payload:  # a secret in a change: scrub each row's text
            self.texts += [(sid, redact(_change_json(ch), secrets), record and redact(record, secrets), rev)
                           for sid, ch, record, rev in rows]
            return
        self.computed.append(payload[1:-1])
        self.n_computed += len(rows)

    @property
    def rows(self) -> int:
        return self.n_computed + len(self.texts) + len(self.failed)


class _Writer:
    """Runs writes in a background thread, in order, while the caller prepares the next ones
    (a step's next batches, apply's next chunk). SQLite writes without holding the GIL, so
    with statements that each write many rows (json_each) the two overlap. At most one write
    waits in line, which bounds the memory held. :meth:`close` waits for every write and
    raises the error of one that failed (later ones are then not attempted)."""

    def __init__(self) -> None:
        self._queue: queue.Queue[Callable[[], None] | None] = queue.Queue(maxsize=1)
        self._error: BaseException | None = None
        self._raised = False
        self._thread = threading.Thread(target=self._loop, name="labelblocks-writer", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while (work := self._queue.get()) is not None:
            if self._error is None:
                try:
                    work()
                except BaseException as e:  # re-raised in the caller's thread
                    self._error = e

    def submit(self, work: Callable[[], None]) -> None:
        """Queue a write; raises the error of an earlier one that failed (nothing more is
        written then)."""
        self._check()
        self._queue.put(work)

    def close(self) -> None:
        """Wait for every submitted write; raise the error of one that failed, unless
        submit already did."""
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()
        if not self._raised:
            self._check()

    def _check(self) -> None:
        if self._error is not None:
            self._raised = True
            raise self._error


class Runner:
    def __init__(self, store: Store, registry: BlockRegistry) -> None:
        self.store = store
        self.registry = registry

    # --- planning ------------------------------------------------------------------------------

    def plan(self, action: Action) -> list[StepPlan]:
        """Resolve every step's block, parameters and secrets. A missing secret raises here,
        before any sample is touched."""
        resolved = validate_steps(action, self.registry)
        plans: list[StepPlan] = []
        chain: list[Any] = []
        for i, (step, res) in enumerate(zip(action.steps, resolved, strict=True), 1):
            reg = self.registry.get(step.block)
            secrets = resolve_secrets(reg.cls.spec().secret_names, step.block)
            block_key = reg.cls().cache_key(res.values) if hasattr(reg.cls, "cache_key") else ""
            chain.append([reg.name, reg.version, res.for_record(), block_key])
            plans.append(StepPlan(i, reg, res, secrets, _sha(chain)))
        return plans

    def select(self, action: Action, ids: Sequence[int] | None = None, limit: int | None = None) -> list[int]:
        """The ids of the samples the action selects, in order."""
        f = action.selection()
        if ids is not None:
            f.ids = list(ids)
        return self.store.select_ids(f, limit=limit)

    def estimate(self, action: Action, ids: Sequence[int] | None = None, limit: int | None = None) -> list[dict[str, Any]]:
        """What each step would cost on the selected samples, from blocks that can tell
        (a classmethod ``estimate(samples, args)`` returning requests and tokens), before
        anything is sent or staged. Later steps are estimated on the samples as stored (their
        earlier steps' proposals do not exist yet). Needs no secrets."""
        resolved = validate_steps(action, self.registry)
        sample_ids = self.select(action, ids=ids, limit=limit)
        out: list[dict[str, Any]] = []
        samples: list[Sample] | None = None
        for i, (step, res) in enumerate(zip(action.steps, resolved, strict=True), 1):
            cls = self.registry.get(step.block).cls
            item: dict[str, Any] = {"step": i, "block": step.block, "samples": len(sample_ids)}
            fn = getattr(cls, "estimate", None)
            if fn is None:
                item["estimate"] = None
            else:
                if samples is None:
                    samples = self.store.get_samples(sample_ids)
                est = fn(samples, res.values)
                item.update({"requests": est["requests"], "promptTokens": est["prompt_tokens"],
                             "completionTokens": est["completion_tokens"]})
            out.append(item)
        return out

    # --- jobs --------------------------------------------------------------------------------------

    def _definition(self, action: Action, plans: Sequence[StepPlan]) -> dict[str, Any]:
        d = action.to_json()
        d["steps"] = [p.describe() for p in plans]
        return d

    def _create_job(self, action: Action, plans: Sequence[StepPlan], kind: str, ids: Sequence[int]) -> int:
        now = time.time()
        definition = self._definition(action, plans)
        with self.store.transaction() as conn:
            job_id = conn.execute(
                insert(jobs).values(action=action.name, kind=kind, status="running", definition=json.dumps(definition),
                                    definition_hash=_sha(definition), pid=os.getpid(), usage="{}",
                                    created_at=now, updated_at=now, sample_ids=pack_ids(sorted(ids)))
                .returning(jobs.c.id)
            ).scalar_one()
        return int(job_id)

    def _unfinished_run(self, action: Action, plans: Sequence[StepPlan]) -> int | None:
        h = _sha(self._definition(action, plans))
        with self.store.engine.connect() as conn:
            row = conn.execute(
                select(jobs.c.id, jobs.c.status, jobs.c.pid)
                .where(and_(jobs.c.action == action.name, jobs.c.kind == "run", jobs.c.definition_hash == h,
                            jobs.c.status.in_(["running", "interrupted", "failed"])))
                .order_by(jobs.c.id.desc())
            ).first()
        if row is None:
            return None
        if row.status == "running" and row.pid and row.pid != os.getpid() and pid_alive(row.pid):
            raise InvalidInput(f"job {row.id} of action {action.name} is running in process {row.pid}; "
                               "wait for it or stop it, then run again to resume")
        return int(row.id)

    def _set_status(self, job_id: int, status: str, error: str | None = None) -> None:
        with self.store.transaction() as conn:
            conn.execute(update(jobs).where(jobs.c.id == job_id)
                         .values(status=status, error=error, updated_at=time.time(), pid=os.getpid()))

    def _add_usage(self, job_id: int, usage: Mapping[str, float]) -> None:
        if not usage:
            return
        with self.store.transaction() as conn:
            cur = json.loads(conn.execute(select(jobs.c.usage).where(jobs.c.id == job_id)).scalar_one() or "{}")
            for k, v in usage.items():
                cur[k] = cur.get(k, 0) + v
            conn.execute(update(jobs).where(jobs.c.id == job_id).values(usage=json.dumps(cur), updated_at=time.time()))

    # --- entry points -----------------------------------------------------------------------

    def preview(self, action: Action, ids: Sequence[int] | None = None, limit: int | None = 10,
                use_cache: bool = True, max_failures: int | None = None,
                on_progress: ProgressFn | None = None) -> JobSummary:
        plans = self.plan(action)
        selected = self.select(action, ids, None if ids is not None else limit)
        if not selected:
            raise InvalidInput(f"action {action.name} selects no samples: nothing to preview")
        job_id = self._create_job(action, plans, "preview", selected)
        return self._execute(job_id, action, plans, "preview", use_cache and action.cache_unchanged_steps,
                             max_failures, on_progress)

    def run(self, action: Action, use_cache: bool = True, max_failures: int | None = None,
            on_progress: ProgressFn | None = None, resume: bool = True) -> JobSummary:
        plans = self.plan(action)
        job_id = self._unfinished_run(action, plans) if resume else None
        resumed = job_id is not None
        if job_id is None:
            selected = self.select(action)
            if not selected:
                raise InvalidInput(f"action {action.name} selects no samples: nothing to run")
            job_id = self._create_job(action, plans, "run", selected)
        else:
            self._set_status(job_id, "running")
        summary = self._execute(job_id, action, plans, "run", use_cache and action.cache_unchanged_steps,
                                max_failures, on_progress)
        summary.resumed = resumed
        return summary

    # --- execution ------------------------------------------------------------------------------

    def _execute(self, job_id: int, action: Action, plans: Sequence[StepPlan], kind: str, use_cache: bool,
                 max_failures: int | None, on_progress: ProgressFn | None) -> JobSummary:
        state = job_state(self.store, job_id)
        summary = JobSummary(job_id, kind, "running", len(state.ids), failed=len(state.failed))
        all_secrets = [v for p in plans for v in p.secrets.values()]
        try:
            whole_set = False
            for plan in plans:
                # a block that sees all samples at once (near-duplicates) gives results that depend
                # on the selection, not only on the sample: neither it nor later steps are cached
                whole_set = whole_set or plan.block.cls.needs_all_samples
                with _batch_gc():
                    self._run_step(job_id, plan, kind, use_cache and not whole_set, max_failures, summary,
                                   on_progress, all_secrets)
            if kind == "run":
                summary.applied = self.apply(job_id, set_metadata=action.set_metadata, on_progress=on_progress)
            status = "completed"
        except KeyboardInterrupt:
            self._set_status(job_id, "interrupted", "interrupted by the user")
            raise
        except TooManyFailures as e:
            self._set_status(job_id, "failed", str(e))
            summary.status = "failed"
            raise
        except Exception as e:
            error = redact(f"{type(e).__name__}: {e}", all_secrets)
            self._set_status(job_id, "failed", error)
            if isinstance(e, LabelblocksError):
                raise
            # anything else (a full disk, a block's crash in setup) reaches the user as a message
            again = f"`labelblocks actions run {action.name}` resumes it; " if kind == "run" else ""
            raise JobFailed(f"job {job_id} failed: {error} ({again}see `labelblocks jobs show {job_id}`)") from e
        counts = job_state(self.store, job_id).counts()
        summary.failed = counts.get("failed", 0)
        summary.applied = counts.get("applied", 0) if kind == "run" else 0
        summary.status = status
        self._set_status(job_id, status)
        summary.usage = self.job_usage(job_id)
        return summary

    def _todo(self, job_id: int, step: int) -> list[int]:
        """Pending samples of the job without a proposal for ``step``."""
        with self.store.engine.connect() as conn:
            done = {r[0] for r in conn.execute(select(proposals.c.sample_id)
                                               .where(and_(proposals.c.job_id == job_id, proposals.c.step == step)))}
        pending = job_state(self.store, job_id).pending()
        return [i for i in pending if i not in done] if done else pending

    def _overlaid(self, job_id: int, ids: Sequence[int],
                  before_step: int) -> tuple[list[tuple[Sample, Sample]], dict[int, float]]:
        """(stored sample, sample with this job's steps < before_step applied) for ids, and
        the revisions of those samples, read in the same transaction."""
        with self.store.engine.connect() as conn, conn.begin():
            stored = self.store.get_samples(ids, conn, missing_ok=True)  # one deleted meanwhile fails alone (_LazyBatch)
            revisions = self.store.revisions(ids, conn)
        return list(zip(stored, overlay(self.store, job_id, stored, before_step - 1), strict=True)), revisions

    def proposals_for(self, job_id: int, ids: Sequence[int] | None = None,
                      max_step: int | None = None) -> dict[int, list[SampleChange]]:
        """The job's proposals of ``ids`` (all when None), per sample in step order."""
        return read_proposals(self.store, job_id, ids, max_step)

    def _cached(self, key: str, revs: Mapping[int, float]) -> dict[int, tuple[str, str | None]]:
        """Changes that earlier jobs' steps of cache key ``key`` computed from these revisions
        of these samples: {sample id: (change, record)}."""
        out: dict[int, tuple[str, str | None]] = {}
        if not revs:
            return out
        with self.store.engine.connect() as conn:
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

    def _run_step(self, job_id: int, plan: StepPlan, kind: str, use_cache: bool, max_failures: int | None,
                  summary: JobSummary, on_progress: ProgressFn | None, all_secrets: list[str]) -> None:
        todo = self._todo(job_id, plan.index)
        if not todo:
            return
        phase = f"step {plan.index}/{plan.block.name}"
        total = len(todo)
        done = 0
        if on_progress:
            on_progress(phase, 0, total)
        block: Block | None = None
        context = BlockContext(secrets=dict(plan.secrets), job_id=job_id, preview=(kind == "preview"),
                               cache_dir=self.store.root / "cache")
        args = dict(plan.resolved.values)
        # a result is reusable by a later job for the same sample revision under the same chain of
        # steps (the step's cache key)
        cache_key = plan.key[:32]
        with self.store.transaction() as conn:
            conn.execute(job_steps.insert().prefix_with("OR REPLACE").values(job_id=job_id, step=plan.index,
                                                                             cache_key=cache_key))
        # results go to the background writer every WRITE_ROWS rows or WRITE_SECONDS, whichever
        # comes first, each lot in one transaction (a commit per batch would cost a fast block more
        # than its own work)
        pending = _Pending()
        last_write = time.monotonic()
        writer = _Writer()

        def flush() -> None:
            nonlocal pending, last_write
            if pending.rows:
                writer.submit(functools.partial(self._store_results, job_id, plan.index, pending, all_secrets))
            pending = _Pending()
            last_write = time.monotonic()

        try:
            cls = plan.block.cls
            external = issubclass(cls, ExternalBlock)  # one process for the whole step
            bs = len(todo) if cls.needs_all_samples or external else max(1, cls().batch_size(args))
            # Each result is stored with the revision of the sample it was computed from, so that
            # a later job can reuse it. The cache lookup and an external block need revisions
            # before the block runs: they are read ahead for many batches at once (a revision read
            # before the block reads the sample can only be older than what the block saw, which
            # makes a later lookup miss, never hit a wrong result). An in-process block's results
            # take the revisions read with the samples when it first looks at them (_LazyBatch),
            # or ANY_REVISION if it never does.
            ahead: Mapping[int, float] = {}
            ahead_end = 0
            for start in range(0, len(todo), bs):
                batch_ids = todo[start : start + bs]
                failed_before = len(pending.failed)
                need = batch_ids
                revs: Mapping[int, float] = {}
                if use_cache or external:
                    if start + len(batch_ids) > ahead_end:
                        ahead_end = start + max(bs, REVISIONS_AHEAD)
                        ahead = self.store.revisions(todo[start:ahead_end])
                    if not all(map(ahead.__contains__, batch_ids)):
                        pending.failed += [(sid, f"sample {sid} was deleted") for sid in batch_ids if sid not in ahead]
                        need = [sid for sid in batch_ids if sid in ahead]
                    revs = {sid: ahead[sid] for sid in need}
                if use_cache:
                    hits = self._cached(cache_key, revs)
                    if hits:
                        pending.texts += [(sid, *hits[sid], revs[sid]) for sid in need if sid in hits]
                        summary.cached += len(hits)
                        need = [sid for sid in need if sid not in hits]
                if need and external:
                    cached_n = len(batch_ids) - len(need)

                    def ext_progress(n: int, _base: int = done + cached_n) -> None:
                        if on_progress:
                            on_progress(phase, _base + n, total)

                    # the block's own proposals are already stored (by the API, as they arrived)
                    left = run_external_step(self, job_id, plan, {sid: revs[sid] for sid in need},
                                             all_secrets, ext_progress)
                    for sid, ext in left.items():
                        if isinstance(ext, SampleFailure):
                            pending.failed.append((sid, ext.error))
                        else:
                            pending.texts.append((sid, ext, None, revs.get(sid)))
                    summary.computed += len(need)
                elif need:
                    if block is None:
                        block = cls()
                        block.setup(args, context)
                    lazy = _LazyBatch(self, job_id, need, plan.index)
                    outs = self._label(block, lazy, args, context)
                    records = context.records
                    # a block that never looked at its samples gave results that hold for any of
                    # their revisions: None, stored as ANY_REVISION
                    seen = lazy.revisions
                    rows: list[tuple[int, SampleChange, str | None, float | None]]
                    if not records and set(map(type, outs)) <= {SampleChange}:  # the common case, at C speed
                        rows = list(zip(need, outs, repeat(None), map(seen.get, need)))  # type: ignore[arg-type]
                    else:
                        rows = []
                        for sid, out in zip(need, outs, strict=True):
                            if isinstance(out, SampleFailure):
                                pending.failed.append((sid, out.error))
                                records.pop(sid, None)
                            else:
                                record = records.pop(sid, None)
                                rows.append((sid, out, json.dumps(record) if record else None, seen.get(sid)))
                    pending.add_computed(rows, all_secrets)
                    summary.computed += len(need)
                summary.failed += len(pending.failed) - failed_before
                if pending.rows >= WRITE_ROWS or time.monotonic() - last_write >= WRITE_SECONDS:
                    flush()
                if context.usage:
                    self._add_usage(job_id, context.usage)
                    context.usage.clear()
                done += len(batch_ids)
                if on_progress:
                    on_progress(phase, done, total)
                if max_failures is not None and summary.failed > max_failures:
                    raise TooManyFailures(f"{summary.failed} samples failed, more than --max-failures {max_failures}: "
                                          f"stopped (see `labelblocks jobs show {job_id}`)")
        finally:
            try:  # what was computed is kept, also when stopped by Ctrl-C or too many failures
                flush()
            finally:
                writer.close()
                if block is not None:
                    block.teardown()

    def _label(self, block: Block, batch: _LazyBatch, args: dict[str, Any],
               context: BlockContext) -> list[SampleChange | SampleFailure]:
        return label_batch(block, batch.inputs(), args, context)

    def _store_results(self, job_id: int, step: int, pending: _Pending, secrets: list[str]) -> None:
        """Write a step's pending proposals and failures in one transaction: a block's changes
        by one statement over their JSON."""
        with self.store.transaction() as conn:
            if pending.computed:
                conn.exec_driver_sql(_INSERT_ROWS, (job_id, step, ANY_REVISION, "[" + ",".join(pending.computed) + "]"))
            if pending.texts:  # one statement too: no row-by-row round trips through the GIL
                rows = [(sid, redact(change, secrets), record and redact(record, secrets), rev)
                        for sid, change, record, rev in pending.texts]
                conn.exec_driver_sql(_INSERT_TEXT_ROWS, (job_id, step, json.dumps(rows)))
            if pending.failed:
                conn.exec_driver_sql("INSERT OR REPLACE INTO job_samples (job_id, sample_id, status, failed_step, error) "
                                     "VALUES (?, ?, 'failed', ?, ?)",
                                     [(job_id, sid, step, redact(error, secrets)[:4000]) for sid, error in pending.failed])

    # --- applying ---------------------------------------------------------------------------------

    def apply(self, job_id: int, ids: Sequence[int] | None = None, set_metadata: Sequence[Any] = (),
              on_progress: ProgressFn | None = None, batch: int | None = None) -> int:
        """Apply the job's composed proposals to pending samples (all, or ``ids``), each sample
        atomically with its status; returns how many were applied."""
        state = job_state(self.store, job_id)
        pending = state.pending()
        if ids is not None:
            wanted = set(ids)
            unknown = wanted - set(state.ids)
            if unknown:
                raise NotFound(f"samples {', '.join(map(str, sorted(unknown)[:10]))} are not part of job {job_id}")
            pending = [i for i in pending if i in wanted]
        extra = {m.key: m.value for m in set_metadata}
        # each chunk is written by a background thread while the next one is read and prepared
        done: list[int] = []  # the samples applied, per chunk
        writer = _Writer()
        with _batch_gc():
            try:
                batch = batch or APPLY_ROWS
                for start in range(0, len(pending), batch):
                    chunk = pending[start : start + batch]
                    items = self._final_changes(job_id, chunk, extra)
                    # a change that changes nothing is not written: the sample keeps its revision,
                    # so results cached for it stay valid
                    writes = [it for it in items if not it[1].is_empty()]
                    writer.submit(functools.partial(self._apply_chunk, job_id, chunk, writes,
                                                    self.store.prepare_changes(writes, missing_ok=True), done))
                    if on_progress:
                        on_progress("apply", start + len(chunk), len(pending))
            finally:
                writer.close()
        return sum(done)

    def _final_changes(self, job_id: int, chunk: list[int], extra: Mapping[str, str]) -> list[tuple[int, SampleChange]]:
        """What applying the job does to each sample of ``chunk``: its steps' changes composed,
        with the action's metadata (``extra``) added and box scores left out."""
        # a chunk's proposals, each distinct text parsed once (labeling jobs repeat a few
        # changes many times); parsed changes are shared, so never modified below
        memo: dict[str, SampleChange] = {}
        parsed = {sid: [memo[t] if t in memo else memo.setdefault(t, _load_change(t)) for t in texts]
                  for sid, texts in _proposal_texts(self.store, job_id, chunk).items()}
        need_md = [sid for sid in chunk if extra and all(c.metadata is None for c in parsed.get(sid, []))]
        base_md = {s.id: s.metadata for s in self.store.get_samples(need_md, missing_ok=True)} if need_md else {}
        items: list[tuple[int, SampleChange]] = []
        for sid in chunk:
            changes = parsed.get(sid)
            final = changes[0] if changes and len(changes) == 1 else compose(changes or [])
            update: dict[str, Any] = {}
            if extra:
                update["metadata"] = {**(final.metadata if final.metadata is not None else base_md.get(sid, {})),
                                      **extra}
            if final.bounding_boxes is not None and any(b.score is not None for b in final.bounding_boxes):
                # scores stay in the job's record only
                update["bounding_boxes"] = [b.model_copy(update={"score": None}) for b in final.bounding_boxes]
            items.append((sid, final.model_copy(update=update) if update else final))
        return items

    def _apply_chunk(self, job_id: int, chunk: list[int], writes: list[tuple[int, SampleChange]],
                     prepared: PreparedChanges, done: list[int]) -> None:
        """Apply one chunk's prepared changes in one transaction, with the samples' status."""
        with self.store.transaction() as conn:
            # under the write lock: none of the samples disappears or changes now
            alive_n = conn.exec_driver_sql("SELECT count(*) FROM samples WHERE id IN (SELECT value FROM json_each(?))",
                                           (json.dumps(chunk),)).scalar_one()
            stale = stale_samples(conn, job_id, chunk)
            if alive_n != len(chunk) or prepared.count != len(writes) or stale:  # deleted or changed since
                alive = self.store.revisions(chunk, conn)
                left_out = [(job_id, i, "the sample was deleted") for i in chunk if i not in alive]
                left_out += [(job_id, i, STALE_ERROR.format(job=job_id)) for i in sorted(stale)]
                conn.exec_driver_sql(
                    "INSERT OR REPLACE INTO job_samples (job_id, sample_id, status, failed_step, error) "
                    "VALUES (?, ?, 'discarded', NULL, ?)", left_out)
                keep = alive.keys() - stale
                chunk = [sid for sid in chunk if sid in keep]
                prepared = self.store.prepare_changes([it for it in writes if it[0] in keep], conn)
            self.store.write_changes(conn, prepared)
            if chunk:
                conn.execute(insert(job_applied).values(job_id=job_id, sample_ids=pack_ids(chunk)))
        done.append(len(chunk))

    def job_usage(self, job_id: int) -> dict[str, float]:
        with self.store.engine.connect() as conn:
            return dict(json.loads(conn.execute(select(jobs.c.usage).where(jobs.c.id == job_id)).scalar_one() or "{}"))


class _LazyBatch:
    """A batch's SampleInputs; the samples (with earlier steps overlaid) are read from the
    store only when the block first looks at one of them."""

    def __init__(self, runner: Runner, job_id: int, ids: Sequence[int], step: int) -> None:
        self._runner, self._job_id, self._ids, self._step = runner, job_id, ids, step
        self._pairs: dict[int, tuple[Sample, Sample]] | None = None
        self.revisions: dict[int, float] = {}  # of the samples read, once read
        self._lock = threading.Lock()  # a block may look at its inputs from several threads

    def pair(self, sid: int) -> tuple[Sample, Sample]:
        if self._pairs is None:
            with self._lock:
                if self._pairs is None:
                    pairs, self.revisions = self._runner._overlaid(self._job_id, self._ids, self._step)
                    self._pairs = {s.id: (s, cur) for s, cur in pairs}
        if sid not in self._pairs:
            raise NotFound(f"sample {sid} was deleted")
        return self._pairs[sid]

    def path(self, sid: int) -> Path:
        return self._runner.store.blob_path(self.pair(sid)[0])

    def inputs(self) -> list[SampleInput]:
        return [_LazyInput(self, sid) for sid in self._ids]


class _LazyInput(SampleInput):
    __slots__ = ("_batch", "_sid")

    def __init__(self, batch: _LazyBatch, sid: int) -> None:  # the base's fields are not used
        self._batch = batch
        self._sid = sid

    @property
    def sample(self) -> Sample:
        return self._batch.pair(self._sid)[1]

    def read_bytes(self) -> bytes:
        return self._batch.path(self._sid).read_bytes()

    def open(self) -> BinaryIO:
        return self._batch.path(self._sid).open("rb")


def label_batch(block: Block, inputs: Sequence[SampleInput], args: Mapping[str, Any],
                context: BlockContext) -> list[SampleChange | SampleFailure]:
    """Call the block on a batch; if the batch call raises, call it per sample so that one
    bad sample fails alone."""
    try:
        out = list(block.label(inputs, args, context))
        if len(out) != len(inputs):
            raise BlockError(f"block returned {len(out)} results for {len(inputs)} samples")
        return out if set(map(type, out)) <= {SampleChange} else [_checked(o) for o in out]  # type: ignore[return-value]
    except Exception as batch_error:
        if len(inputs) == 1:
            return [SampleFailure(_describe(batch_error))]
        results: list[SampleChange | SampleFailure] = []
        for inp in inputs:
            try:
                [o] = list(block.label([inp], args, context))
                results.append(_checked(o))
            except Exception as e:
                results.append(SampleFailure(_describe(e)))
        return results


def _checked(o: Any) -> SampleChange | SampleFailure:
    if isinstance(o, (SampleChange, SampleFailure)):
        return o
    if isinstance(o, dict):
        return parse_change(o, "block result")
    raise BlockError(f"expected a SampleChange, SampleFailure or dict from the block, got {type(o).__name__}")


def _describe(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}" if not isinstance(e, LabelblocksError) else str(e)


# --- describing changes ------------------------------------------------------------------------


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
