"""How a step runs: the runner picks one executor per step through one interface
(:class:`.base.StepExecutor`), by what the step's block declares (``Block.executor``).

- :mod:`.inprocess`: a Python block's batches, in this process;
- :mod:`.external`: a program or container speaking the protocol, given a job-scoped
  :mod:`labelblocks.api` app on loopback;
- :mod:`.ray`: a Python block's step on a Ray cluster (``--engine ray``), as Ray Data
  ``map_batches`` over a pool of actors.
"""

from __future__ import annotations

from .base import StepExecutor, StepPlan, StepResults, pid_alive
from .choose import make_executor

__all__ = ["StepExecutor", "StepPlan", "StepResults", "make_executor", "pid_alive"]
