"""Writing a step's results while its block computes the next batches, and reading sample
revisions ahead of the blocks (the storage plumbing of the runner's step loop)."""

from __future__ import annotations

import functools
import time
from collections.abc import Mapping

from ..secrets import redact
from ..store import Store
from ..store import jobs as job_store
from ..store.writer import BackgroundWriter
from .base import StepResults

WRITE_ROWS = 10_000  # a step's results are committed at least every this many samples
WRITE_SECONDS = 1.0  # ... or this often, whichever comes first (a kill loses about this much work, plus the write in flight)
REVISIONS_AHEAD = 20_000  # sample revisions (for cache keys) are read this many at a time


def write_results(store: Store, job_id: int, step: int, results: StepResults, secrets: list[str]) -> None:
    """Write a step's results in one transaction, every secret value redacted from the texts
    and errors (computed changes were checked as they were added)."""
    texts = [(sid, redact(change, secrets), record and redact(record, secrets), rev)
             for sid, change, record, rev in results.texts]
    failed = [(sid, redact(error, secrets)[:4000]) for sid, error in results.failed]
    job_store.write_step_results(store, job_id, step, results.computed, texts, failed, results.inputs)


class StepWriter:
    """A step's results, handed to the background writer every WRITE_ROWS rows or
    WRITE_SECONDS, whichever comes first, each lot in one transaction (a commit per batch
    would cost a fast block more than its own work)."""

    def __init__(self, store: Store, job_id: int, step: int, secrets: list[str]) -> None:
        self._write = functools.partial(write_results, store, job_id, step, secrets=secrets)
        self.results = StepResults()
        self._last = time.monotonic()
        self._writer = BackgroundWriter()

    def maybe_flush(self) -> None:
        if self.results.rows >= WRITE_ROWS or time.monotonic() - self._last >= WRITE_SECONDS:
            self.flush()

    def flush(self) -> None:
        if self.results.rows:
            self._writer.submit(functools.partial(self._write, self.results.take()))
        self._last = time.monotonic()

    def close(self) -> None:
        """Write what is left and wait; raises the error of a failed write."""
        try:
            self.flush()
        finally:
            self._writer.close()


class RevisionsAhead:
    """Each result is stored with the revision of the sample it was computed from, so that a
    later job can reuse it. The cache lookup and an external block need revisions before the
    block runs: they are read ahead for many batches at once (a revision read before the block
    reads the sample can only be older than what the block saw, which makes a later lookup
    miss, never hit a wrong result). An in-process block's results take the revisions read
    with the samples when it first looks at them, or ANY_REVISION if it never does."""

    def __init__(self, store: Store, todo: list[int], batch_size: int) -> None:
        self.store, self.todo, self.batch_size = store, todo, batch_size
        self.ahead: Mapping[int, float] = {}
        self.end = 0

    def read(self, start: int, batch_ids: list[int], results: StepResults) -> tuple[list[int], dict[int, float]]:
        """The batch's samples that still exist and their revisions; a deleted one fails."""
        if start + len(batch_ids) > self.end:
            self.end = start + max(self.batch_size, REVISIONS_AHEAD)
            self.ahead = self.store.revisions(self.todo[start : self.end])
        need = batch_ids
        if not all(map(self.ahead.__contains__, batch_ids)):
            results.failed += [(sid, f"sample {sid} was deleted") for sid in batch_ids if sid not in self.ahead]
            need = [sid for sid in batch_ids if sid in self.ahead]
        return need, {sid: self.ahead[sid] for sid in need}

