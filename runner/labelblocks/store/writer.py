"""Storage plumbing shared by the runner and apply: the background writer, and the
interpreter tuning in force while a step or an apply runs."""

from __future__ import annotations

import gc
import queue
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

GC_YOUNG = 20_000  # allocations between collections of the youngest generation during a step or apply
SWITCH_INTERVAL = 0.001  # seconds a thread may hold the GIL while another waits, during a step or apply


@dataclass
class _Tuning:
    """The steps running in this process, and the settings from before the first of them."""

    running: int = 0
    saved: tuple[tuple[int, ...], float] = ((), 0.0)


_tuning = _Tuning()
_tuning_lock = threading.Lock()


@contextmanager
def batch_tuning() -> Iterator[None]:
    """Tune the interpreter for a step or an apply, restoring its settings after.

    The garbage collector's youngest generation is collected every GC_YOUNG allocations
    instead of CPython's 700. A batch's objects (inputs, changes, rows) die with the batch.
    Collected every 700 allocations, most of them are still alive, get promoted, and are
    scanned again by the older generations' collections, which also scan a model block's
    long-lived objects: that doubled the time of a block that only builds one change per
    sample (benchmarks/runner.py). Cycles are still collected.

    The GIL switch interval drops from 5 ms to SWITCH_INTERVAL: the background writer
    (BackgroundWriter) needs the GIL for a moment between its SQLite calls, and would otherwise wait
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


class BackgroundWriter:
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
