"""Running a Python block's batches in this process.

The block is set up on the first batch that needs it and torn down when the step ends. A
batch's samples (with the job's earlier steps overlaid) are read from the store only when
the block first looks at one of them; a block that never does gives results that hold for
any revision of its samples.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Mapping, Sequence
from itertools import repeat
from pathlib import Path
from typing import Any, BinaryIO

from ..blocks import Block, BlockContext, SampleFailure, SampleInput
from ..errors import BlockError, LabelblocksError, NotFound, StopJob
from ..model import Sample, SampleChange, parse_change
from ..store import Store
from ..store.proposals import overlay
from .base import ComputedRow, StepPlan, StepResults


class InProcessExecutor:
    """A step of an in-process block (:class:`labelblocks.blocks.Block`)."""

    needs_revisions = False
    streams = False

    def __init__(self, store: Store, job_id: int, plan: StepPlan, preview: bool, secrets: list[str],
                 learned: Callable[[int], Any] | None = None) -> None:
        self.store, self.job_id, self.plan, self.secrets = store, job_id, plan, secrets
        self.args = dict(plan.resolved.values)
        self.context = BlockContext(secrets=dict(plan.secrets), job_id=job_id, preview=preview,
                                    cache_dir=store.root / "cache", learned=learned)
        self.block: Block | None = None

    def batch_size(self, todo: int) -> int:
        cls = self.plan.block.cls
        return todo if cls.needs_all_samples else max(1, cls().batch_size(self.args))

    def run(self, ids: list[int], revisions: Mapping[int, float], results: StepResults,
            on_progress: Callable[[int], None]) -> None:
        if self.block is None:
            self.block = self.plan.block.cls()
            self.block.setup(self.args, self.context)
        lazy = LazyBatch(self.store, self.job_id, ids, self.plan.index)
        outs = label_batch(self.block, lazy.inputs(), self.args, self.context)
        records = self.context.records
        # a block that never looked at its samples (or declares that it never reads them) gave
        # results that hold for any of their revisions: None, stored as ANY_REVISION
        seen = lazy.revisions if self.plan.block.cls.reads_samples else {}
        rows: list[ComputedRow]
        if not records and set(map(type, outs)) <= {SampleChange}:  # the common case, at C speed
            rows = list(zip(ids, outs, repeat(None), map(seen.get, ids)))  # type: ignore[arg-type]
        else:
            rows = []
            for sid, out in zip(ids, outs, strict=True):
                if isinstance(out, SampleFailure):
                    results.failed.append((sid, out.error))
                    records.pop(sid, None)
                else:
                    record = records.pop(sid, None)
                    rows.append((sid, out, json.dumps(record) if record else None, seen.get(sid)))
        results.add_computed(rows, self.secrets)

    def take_usage(self) -> dict[str, float]:
        usage = dict(self.context.usage)
        self.context.usage.clear()
        return usage

    def close(self) -> None:
        if self.block is not None:
            self.block.teardown()


class LazyBatch:
    """A batch's SampleInputs; the samples (with earlier steps overlaid) are read from the
    store only when the block first looks at one of them."""

    def __init__(self, store: Store, job_id: int, ids: Sequence[int], step: int) -> None:
        self._store, self._job_id, self._ids, self._step = store, job_id, ids, step
        self._pairs: dict[int, tuple[Sample, Sample]] | None = None
        self.revisions: dict[int, float] = {}  # of the samples read, once read
        self._lock = threading.Lock()  # a block may look at its inputs from several threads

    def pair(self, sid: int) -> tuple[Sample, Sample]:
        if self._pairs is None:
            with self._lock:
                if self._pairs is None:
                    pairs, self.revisions = overlaid(self._store, self._job_id, self._ids, self._step)
                    self._pairs = {s.id: (s, cur) for s, cur in pairs}
        if sid not in self._pairs:
            raise NotFound(f"sample {sid} was deleted")
        return self._pairs[sid]

    def path(self, sid: int) -> Path:
        return self._store.blob_path(self.pair(sid)[0])

    def inputs(self) -> list[SampleInput]:
        return [_LazyInput(self, sid) for sid in self._ids]


class _LazyInput(SampleInput):
    __slots__ = ("_batch", "_sid")

    def __init__(self, batch: LazyBatch, sid: int) -> None:  # the base's fields are not used
        self._batch = batch
        self._sid = sid

    @property
    def sample(self) -> Sample:
        return self._batch.pair(self._sid)[1]

    def read_bytes(self) -> bytes:
        return self._batch.path(self._sid).read_bytes()

    def open(self) -> BinaryIO:
        return self._batch.path(self._sid).open("rb")


def overlaid(store: Store, job_id: int, ids: Sequence[int],
             before_step: int) -> tuple[list[tuple[Sample, Sample]], dict[int, float]]:
    """(stored sample, sample with this job's steps < before_step applied) for ids, and
    the revisions of those samples, read in the same transaction."""
    stored, revisions = store.samples_and_revisions(ids)  # one deleted meanwhile fails alone (LazyBatch)
    return list(zip(stored, overlay(store, job_id, stored, before_step - 1), strict=True)), revisions


def label_batch(block: Block, inputs: Sequence[SampleInput], args: Mapping[str, Any],
                context: BlockContext) -> list[SampleChange | SampleFailure]:
    """Call the block on a batch; if the batch call raises, call it per sample so that one
    bad sample fails alone."""
    try:
        out = list(block.label(inputs, args, context))
        if len(out) != len(inputs):
            raise BlockError(f"block returned {len(out)} results for {len(inputs)} samples")
        return out if set(map(type, out)) <= {SampleChange} else [_checked(o) for o in out]  # type: ignore[return-value]
    except StopJob:
        raise
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
