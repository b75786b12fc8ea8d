"""Running actions: preview (stage proposals of a job) and run (label all, applying).

Data flow for a job::

    select samples ─► for each step k: read the samples with steps 1..k-1's proposals of this
    job applied ─► the step's executor runs the block ─► store step k's proposals (a
    background thread writes them, every WRITE_ROWS samples, while the block computes the
    next batches) ─► preview: stop here        run: apply each sample's composed change
    atomically (:mod:`labelblocks.apply`)

Progress is recorded per sample and step, so a job killed at any moment resumes where it
stopped: finished (sample, step) pairs are never recomputed and a sample is applied whole or
not at all. Results are cached by (the sample's stored state, the chain of steps up to k):
a run after a preview of the same steps reuses the preview's results.

This module plans, selects and loops over steps and batches; the store (:mod:`.store.jobs`)
owns every statement on the job tables, and the executors (:mod:`.executors`) run blocks.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from .actions import Action, validate_steps
from .apply import ProgressFn, apply_job
from .blocks import input_key
from .errors import InvalidInput, LabelblocksError
from .executors import StepExecutor, StepPlan, StepResults, make_executor, pid_alive
from .executors.ray import RayEngine
from .executors.results import RevisionsAhead, StepWriter, write_results
from .parameters import ResolvedParameters
from .plugins import BlockRegistry, RegisteredBlock
from .secrets import redact, resolve_secrets
from .store import Store
from .store import jobs as job_store
from .store import proposals as proposal_store
from .store.writer import batch_tuning
from .summary import JobFailed, JobSummary, TooManyFailures

__all__ = ["JobFailed", "JobSummary", "ProgressFn", "Runner", "StepPlan", "TooManyFailures", "write_results"]


RERUN_ROUNDS = 3  # a run labels again, at most this many times, the samples that changed while it ran


def _step_identity(reg: RegisteredBlock, res: ResolvedParameters) -> list[Any]:
    """What identifies a step for reuse: the block, its version, its parameters, its cache key."""
    return [reg.name, reg.version, res.for_record(), reg.cls().cache_key(res.values)]


def _sha(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


class Runner:
    def __init__(self, store: Store, registry: BlockRegistry, engine: RayEngine | None = None) -> None:
        self.store = store
        self.registry = registry
        self.engine = engine  # None: Python blocks run in this process; a RayEngine: on a Ray cluster
        self._models: dict[int, Any] = {}

    def learned(self, learn_id: int) -> Any:
        """A learned model of the project (loaded once per runner), for blocks that score with one."""
        if learn_id not in self._models:
            from .learn import load

            self._models[learn_id] = load(self.store, learn_id)
        return self._models[learn_id]

    # --- planning ------------------------------------------------------------------------------

    def plan(self, action: Action) -> list[StepPlan]:
        """Resolve every step's block, parameters and secrets. A missing secret raises here,
        before any sample is touched."""
        resolved = validate_steps(action, self.registry)
        plans: list[StepPlan] = []
        # a step computes from the sample without its action's earlier contributions, so results
        # are reused within one action (its previews and runs), never across actions
        chain: list[Any] = [action.name]
        for i, (step, res) in enumerate(zip(action.steps, resolved, strict=True), 1):
            reg = self.registry.get(step.block)
            spec = reg.cls.spec()
            provided = reg.cls.prepare_run()
            secrets = {**resolve_secrets([n for n in spec.secret_names if n not in provided], step.block,
                                         spec.optional_secrets), **provided}
            chain.append(_step_identity(reg, res))
            plans.append(StepPlan(i, reg, res, secrets, _sha(chain), _sha(chain[-1])[:32]))
        return plans

    def select(self, action: Action, ids: Sequence[int] | None = None, limit: int | None = None) -> list[int]:
        """The ids of the samples the action selects, in order."""
        f = action.selection()
        if ids is not None:
            f.ids = list(ids)
        return self.store.select_ids(f, limit=limit)

    def estimate(self, action: Action, ids: Sequence[int] | None = None, limit: int | None = None) -> list[dict[str, Any]]:
        """What each step would cost on the selected samples, from blocks that can tell
        (``can_estimate``), before anything is sent or staged. Later steps are estimated on the
        samples as stored (their earlier steps' proposals do not exist yet). Needs no secrets."""
        resolved = validate_steps(action, self.registry)
        sample_ids = self.select(action, ids=ids, limit=limit)
        out: list[dict[str, Any]] = []
        samples = None
        chain: list[Any] = [action.name]
        revisions: dict[int, float] | None = None
        for i, (step, res) in enumerate(zip(action.steps, resolved, strict=True), 1):
            reg = self.registry.get(step.block)
            cls = reg.cls
            chain.append(_step_identity(reg, res))
            item: dict[str, Any] = {"step": i, "block": step.block, "samples": len(sample_ids)}
            if i > 1:
                # later steps read what earlier ones propose (boxes to check, labels to map): their
                # count is an estimate on the samples as stored
                item["dependsOnEarlierSteps"] = True
            if not cls.can_estimate:
                item["estimate"] = None
            else:
                if samples is None:
                    samples = self.store.get_samples(sample_ids)
                todo = samples
                if action.cache_unchanged_steps and i == 1 and not cls.needs_all_samples:
                    # results an earlier preview or run computed for these very samples are reused
                    revisions = revisions if revisions is not None else self.store.revisions(sample_ids)
                    hits = job_store.cached_results(self.store, _sha(chain)[:32], revisions)
                    item["reused"] = len(hits)
                    todo = [s for s in samples if s.id not in hits]
                item.update(cls.estimate(todo, res.values).to_json())
            out.append(item)
        return out

    # --- jobs --------------------------------------------------------------------------------------

    def _definition(self, action: Action, plans: Sequence[StepPlan]) -> dict[str, Any]:
        d = action.to_json()
        d["steps"] = [p.describe() for p in plans]
        return d

    def _create_job(self, action: Action, plans: Sequence[StepPlan], kind: str, ids: Sequence[int]) -> int:
        definition = self._definition(action, plans)
        return job_store.create_job(self.store, action.name, kind, definition, _sha(definition), ids)

    def _unfinished_run(self, action: Action, plans: Sequence[StepPlan]) -> int | None:
        job = job_store.unfinished_run(self.store, action.name, _sha(self._definition(action, plans)))
        if job is None:
            return None
        if job.status == "running" and job.pid and job.pid != os.getpid() and pid_alive(job.pid):
            raise InvalidInput(f"job {job.id} of action {action.name} is running in process {job.pid}; "
                               "wait for it or stop it, then run again to resume")
        return job.id

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
            on_progress: ProgressFn | None = None, resume: bool = True, all_samples: bool = False) -> JobSummary:
        """Label the action's samples and apply. A sample this action (the same steps and
        parameters) already applied to, unchanged since, is passed over (running an action
        twice changes nothing the second time) unless ``all_samples``."""
        plans = self.plan(action)
        job_id = self._unfinished_run(action, plans) if resume else None
        resumed = job_id is not None
        unchanged: set[int] = set()
        if job_id is None:
            selected = self.select(action)
            if not selected:
                raise InvalidInput(f"action {action.name} selects no samples: nothing to run")
            if not all_samples:
                defined = _sha(self._definition(action, plans))
                unchanged = job_store.unchanged_since_applied(self.store, action.name, defined, selected)
                selected = [sid for sid in selected if sid not in unchanged]
                if not selected:
                    return JobSummary(0, "run", "up-to-date", 0, unchanged=len(unchanged))
            job_id = self._create_job(action, plans, "run", selected)
        else:
            job_store.set_job_status(self.store, job_id, "running")
        use = use_cache and action.cache_unchanged_steps
        summary = self._execute(job_id, action, plans, "run", use, max_failures, on_progress)
        summary.resumed = resumed
        summary.unchanged = len(unchanged)
        # samples that changed while the run computed them were left out (nothing is overwritten):
        # label them again as they are now, a bounded number of times
        changed, deleted = job_store.left_out(self.store, summary.job_id)
        while changed and summary.rounds < RERUN_ROUNDS:
            summary.rounds += 1
            again = self._execute(self._create_job(action, plans, "run", changed), action, plans, "run", use,
                                  max_failures, on_progress)
            summary.applied += again.applied
            summary.failed += again.failed
            summary.computed += again.computed
            summary.cached += again.cached
            changed, _ = job_store.left_out(self.store, again.job_id)
        summary.left_out = sorted(changed + deleted)
        return summary

    def apply(self, job_id: int, ids: Sequence[int] | None = None, set_metadata: Sequence[Any] = (),
              on_progress: ProgressFn | None = None, batch: int | None = None) -> int:
        """Apply the job's proposals (see :func:`labelblocks.apply.apply_job`)."""
        return apply_job(self.store, job_id, ids, set_metadata, on_progress, batch)

    # --- execution ------------------------------------------------------------------------------

    def _execute(self, job_id: int, action: Action, plans: Sequence[StepPlan], kind: str, use_cache: bool,
                 max_failures: int | None, on_progress: ProgressFn | None) -> JobSummary:
        state = job_store.job_state(self.store, job_id)
        summary = JobSummary(job_id, kind, "running", len(state.ids), failed=len(state.failed))
        all_secrets = [v for p in plans for v in p.secrets.values()]
        self._skip_unhandled(job_id, plans, state.pending())
        try:
            whole_set = False
            for plan in plans:
                # a block that sees all samples at once (near-duplicates) gives results that depend
                # on the selection, not only on the sample: neither it nor later steps are cached
                whole_set = whole_set or plan.block.cls.needs_all_samples
                with batch_tuning():
                    # a block that declares what it reads is reused by what it reads, which holds
                    # also after a whole-set step (its effect is in what the block reads)
                    by_inputs = use_cache and plan.block.cls.reads is not None and not plan.block.cls.needs_all_samples
                    self._run_step(job_id, plan, kind, use_cache and not whole_set, max_failures, summary,
                                   on_progress, all_secrets, by_inputs)
            if kind == "run":
                summary.applied = self.apply(job_id, set_metadata=action.set_metadata, on_progress=on_progress)
        except KeyboardInterrupt:
            job_store.set_job_status(self.store, job_id, "interrupted", "interrupted by the user")
            raise
        except TooManyFailures as e:
            job_store.set_job_status(self.store, job_id, "failed", str(e))
            summary.status = "failed"
            raise
        except Exception as e:
            raise self._failed(job_id, action, kind, e, all_secrets) from e
        counts = job_store.job_state(self.store, job_id).counts()
        summary.failed = counts.get("failed", 0)
        summary.skipped = counts.get("skipped", 0)
        summary.applied = counts.get("applied", 0) if kind == "run" else 0
        summary.status = "completed"
        job_store.set_job_status(self.store, job_id, "completed")
        summary.usage = job_store.job_usage(self.store, job_id)
        return summary

    def _failed(self, job_id: int, action: Action, kind: str, e: Exception, secrets: list[str]) -> Exception:
        """Record the job as failed on ``e``; the error to raise: ``e`` itself for a
        labelblocks error, anything else (a full disk, a block's crash in setup) as a message."""
        error = redact(f"{type(e).__name__}: {e}", secrets)
        job_store.set_job_status(self.store, job_id, "failed", error)
        if isinstance(e, LabelblocksError):
            return e
        again = f"`labelblocks actions run {action.name}` resumes it; " if kind == "run" else ""
        return JobFailed(f"job {job_id} failed: {error} ({again}see `labelblocks jobs show {job_id}`)")

    def _skip_unhandled(self, job_id: int, plans: Sequence[StepPlan], pending: list[int]) -> None:
        """Samples no step operates on (audio, when every step labels images) are skipped:
        left as they are, neither applied nor failed."""
        handled = frozenset().union(*(p.block.cls.media_kinds() for p in plans))
        if handled >= {"image", "audio"} or not pending:
            return
        audio = self.store.audio_ids(pending)
        kind = "audio" if "audio" not in handled else "image"
        names = ", ".join(p.block.name for p in plans)
        left = [sid for sid in pending if (sid in audio) == (kind == "audio")]
        why = f"no step operates on {kind} samples ({names}: {', '.join(sorted(handled))} only)"
        job_store.skip_samples(self.store, job_id, dict.fromkeys(left, why))

    def _handled(self, plan: StepPlan, todo: list[int], summary: JobSummary) -> list[int]:
        """The samples of ``todo`` the step's block operates on; the others pass it unchanged."""
        kinds = plan.block.cls.media_kinds()
        if kinds >= {"image", "audio"}:
            return todo
        audio = self.store.audio_ids(todo)
        keep = [sid for sid in todo if ("audio" if sid in audio else "image") in kinds]
        if len(keep) < len(todo):
            other = "audio" if "audio" not in kinds else "image"
            summary.notes.append(f"step {plan.index} ({plan.block.name}) passed over {len(todo) - len(keep)} "
                                 f"{other} samples: it operates on {', '.join(sorted(kinds))} only")
        return keep

    def _todo(self, job_id: int, step: int) -> list[int]:
        """Pending samples of the job without a proposal for ``step``."""
        done = job_store.proposed_ids(self.store, job_id, step)
        pending = job_store.job_state(self.store, job_id).pending()
        return [i for i in pending if i not in done] if done else pending

    def _run_step(self, job_id: int, plan: StepPlan, kind: str, use_cache: bool, max_failures: int | None,
                  summary: JobSummary, on_progress: ProgressFn | None, all_secrets: list[str],
                  by_inputs: bool = False) -> None:
        todo = self._handled(plan, self._todo(job_id, plan.index), summary)
        if not todo:
            return
        phase, total, done = f"step {plan.index}/{plan.block.name}", len(todo), 0
        report: Callable[[int], None] = (lambda n: on_progress(phase, n, total)) if on_progress else (lambda n: None)
        report(0)
        # a result is reusable by a later job for the same sample revision under the same chain of
        # steps (the step's cache key)
        cache_key = plan.key[:32]
        job_store.record_step(self.store, job_id, plan.index, cache_key)
        executor = make_executor(self.store, job_id, plan, kind == "preview", all_secrets, self.learned, self.engine)
        out = StepWriter(self.store, job_id, plan.index, all_secrets)
        try:  # what was computed is kept, also when stopped by Ctrl-C or too many failures
            bs = executor.batch_size(len(todo))
            revisions = RevisionsAhead(self.store, todo, bs)
            for start in range(0, len(todo), bs):
                batch_ids = todo[start : start + bs]
                failed_before = out.results.failures
                progress = functools.partial(_offset, report, done)
                if executor.streams:  # results written as they come back, not at the end of the step
                    progress = functools.partial(_and_flush, progress, out)
                self._run_batch(executor, cache_key, batch_ids, start, use_cache, revisions, out.results,
                                summary, progress, (job_id, plan) if by_inputs else None)
                summary.failed += out.results.failures - failed_before
                out.maybe_flush()
                job_store.add_job_usage(self.store, job_id, executor.take_usage())
                done += len(batch_ids)
                report(done)
                if max_failures is not None and summary.failed > max_failures:
                    raise TooManyFailures(f"{summary.failed} samples failed, more than --max-failures {max_failures}: "
                                          f"stopped (see `labelblocks jobs show {job_id}`)")
        finally:
            try:
                out.close()
            finally:
                executor.close()

    def _run_batch(self, executor: StepExecutor, cache_key: str, batch_ids: list[int], start: int,
                   use_cache: bool, revisions: RevisionsAhead, results: StepResults, summary: JobSummary,
                   report: Callable[[int], None], by_inputs: tuple[int, StepPlan] | None = None) -> None:
        """One batch of a step: results reused from earlier jobs where allowed, the rest run."""
        need, revs = batch_ids, dict[int, float]()
        if use_cache or by_inputs or executor.needs_revisions:
            need, revs = revisions.read(start, batch_ids, results)

        def reuse(hits: Mapping[int, tuple[str, str | None]]) -> list[int]:
            """Take ``hits`` as results (with the revision read now); the samples still to run."""
            results.texts += [(sid, *hits[sid], revs[sid]) for sid in need if sid in hits]
            summary.cached += len(hits)
            return [sid for sid in need if sid not in hits]

        if use_cache:
            need = reuse(job_store.cached_results(self.store, cache_key, revs))
        keys: dict[int, str] = {}
        step_key = ""
        if by_inputs and need:
            # what the block would read of each sample, as this step sees it: a result computed
            # from the same is reused (stored with the revision read now, which it is valid for)
            job_id, plan = by_inputs
            step_key = plan.step_key
            seen = proposal_store.overlay(self.store, job_id, self.store.get_samples(need, missing_ok=True), plan.index - 1)
            keys = {s.id: input_key(s, plan.block.cls.reads or frozenset()) for s in seen}
            need = reuse(job_store.results_for_inputs(self.store, step_key, keys))
        if need:
            cached_n = len(batch_ids) - len(need)
            executor.run(need, revs, results, functools.partial(_offset, report, cached_n))
            summary.computed += len(need)
            results.inputs += [(step_key, sid, keys[sid]) for sid in need if sid in keys]


def _offset(report: Callable[[int], None], base: int, n: int) -> None:
    report(base + n)


def _and_flush(report: Callable[[int], None], out: StepWriter, n: int) -> None:
    report(n)
    out.maybe_flush()
