"""Choosing a step's executor by what its block declares (``Block.executor``) and the engine asked for."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..store import Store
from .base import StepExecutor, StepPlan
from .inprocess import InProcessExecutor


def make_executor(store: Store, job_id: int, plan: StepPlan, preview: bool, secrets: list[str],
                  learned: Callable[[int], Any] | None = None, engine: Any = None) -> StepExecutor:
    """The executor of ``plan``'s step in job ``job_id``. ``secrets``: every secret value of
    the job, redacted from whatever the step writes; ``learned``: the project's learned models
    by id, for in-process blocks; ``engine``: a :class:`.ray.RayEngine` to run Python blocks'
    steps on a Ray cluster (None: in this process)."""
    kind = plan.block.cls.executor
    if kind == "external":
        from .external import ExternalExecutor  # the API server (FastAPI) loads only for external steps

        return ExternalExecutor(store, job_id, plan, secrets)
    if kind == "inprocess" and engine is not None and not plan.block.cls.uses_project:
        from .ray import RayExecutor  # Ray loads only for --engine ray

        return RayExecutor(store, job_id, plan, preview, secrets, engine)
    if kind == "inprocess":
        return InProcessExecutor(store, job_id, plan, preview, secrets, learned)
    raise ValueError(f"block {plan.block.name} declares an unknown executor {kind!r}: expected inprocess or external")
