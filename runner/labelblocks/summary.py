"""What a job's run or preview reports (:class:`JobSummary`), and how it stops."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .errors import LabelblocksError


class TooManyFailures(LabelblocksError):
    pass


class JobFailed(LabelblocksError):
    """A job stopped on an unexpected error (recorded in the job); its cause is chained."""


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
    skipped: int = 0  # samples no step operates on (audio in an action of image blocks), left as they are
    unchanged: int = 0  # samples this action already applied to and nothing changed since: passed over
    rounds: int = 0  # extra rounds a run made for samples that changed while it ran
    left_out: list[int] = field(default_factory=list)  # samples a run could not apply (changed each time, or deleted)
    notes: list[str] = field(default_factory=list)  # what a step left out, in words
    usage: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"jobId": self.job_id, "kind": self.kind, "status": self.status, "samples": self.total,
                "applied": self.applied, "failed": self.failed, "skipped": self.skipped, "unchanged": self.unchanged,
                "rounds": self.rounds, "leftOut": self.left_out, "computed": self.computed,
                "cached": self.cached, "resumed": self.resumed, "notes": self.notes, "usage": self.usage}
