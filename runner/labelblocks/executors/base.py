"""What the runner hands an executor, and what an executor hands back.

The runner plans a step (:class:`StepPlan`), picks the samples that still need it, looks up
results it may reuse, and gives the rest, a batch at a time, to the step's executor
(:class:`StepExecutor`). The executor runs the block on them and adds the results to a
:class:`StepResults`, which the runner writes in the background.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..model import SampleChange
from ..parameters import ResolvedParameters
from ..plugins import RegisteredBlock
from ..secrets import redact
from ..store.jobs import ROWS, TextRow
from ..store.proposals import change_json


@dataclass
class StepPlan:
    """One step of an action, resolved: its block, arguments and secrets."""

    index: int  # 1-based
    block: RegisteredBlock
    resolved: ResolvedParameters
    secrets: dict[str, str]
    key: str  # identifies the chain of steps up to this one: blocks, versions and parameters
    step_key: str = ""  # identifies this step alone: block, version and parameters

    def describe(self) -> dict[str, Any]:
        return {"step": self.index, "block": self.block.name, "version": self.block.version,
                "parameters": self.resolved.for_record()}


# (sample id, change, record JSON, revision or None: see labelblocks.store.jobs.ANY_REVISION)
ComputedRow = tuple[int, SampleChange, str | None, float | None]


@dataclass
class StepResults:
    """A step's results not yet written: changes a block computed (serialised at once, so that
    the objects do not pile up for the garbage collector), change texts (cached or from an
    external block), and failures."""

    computed: list[str] = field(default_factory=list)  # JSON arrays of ROWS without their brackets
    n_computed: int = 0
    texts: list[TextRow] = field(default_factory=list)
    failed: list[tuple[int, str]] = field(default_factory=list)
    inputs: list[tuple[str, int, str]] = field(default_factory=list)  # (step key, sample id, input key)
    failed_before: int = 0  # failures already taken out (:meth:`take`)

    def add_computed(self, rows: list[ComputedRow], secrets: list[str]) -> None:
        if not rows:
            return
        payload = ROWS.dump_json(rows, by_alias=True, exclude_none=True).decode()
        if secrets and redact(payload, secrets) != payload:  # a secret in a change: scrub each row's text
            self.texts += [(sid, redact(change_json(ch), secrets), record and redact(record, secrets), rev)
                           for sid, ch, record, rev in rows]
            return
        self.computed.append(payload[1:-1])
        self.n_computed += len(rows)

    @property
    def rows(self) -> int:
        return self.n_computed + len(self.texts) + len(self.failed)

    @property
    def failures(self) -> int:
        """Every failure added, also those taken out since."""
        return self.failed_before + len(self.failed)

    def take(self) -> StepResults:
        """What was added so far, as a new object; this one is emptied in place (an executor
        that streams keeps adding to it while the taken part is written)."""
        taken = StepResults(self.computed, self.n_computed, self.texts, self.failed, self.inputs)
        self.failed_before += len(self.failed)
        self.computed, self.n_computed, self.texts, self.failed, self.inputs = [], 0, [], [], []
        return taken


class StepExecutor(Protocol):
    """How a step's batches run: in this process (:mod:`.inprocess`) or as an external program
    or container (:mod:`.external`). The runner makes one per step and closes it after."""

    #: the executor needs the samples' revisions before it runs (read ahead by the runner)
    needs_revisions: bool

    def batch_size(self, todo: int) -> int:
        """How many of the ``todo`` samples to give :meth:`run` at once."""
        ...

    def run(self, ids: list[int], revisions: Mapping[int, float], results: StepResults,
            on_progress: Callable[[int], None]) -> None:
        """Label ``ids``, adding a result or a failure for each to ``results``.
        ``revisions``: the samples' revisions read before (where :attr:`needs_revisions`).
        ``on_progress(n)``: n of ``ids`` are done (executors that finish inside a batch)."""
        ...

    #: the executor takes the whole step in one :meth:`run`, reporting progress as results come
    #: back; the runner writes what it added at each report
    streams: bool

    def take_usage(self) -> dict[str, float]:
        """Usage counters (requests, tokens) added since the last call."""
        ...

    def close(self) -> None:
        """Release the block (its models, processes)."""
        ...


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, someone else's
        return True
    return True
