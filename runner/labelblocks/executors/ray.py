"""Running a Python block's step on a Ray cluster (``--engine ray``).

The runner plans the job and picks the samples as for an in-process step; this executor then
gives the whole step to Ray Data: the samples (as this step sees them, earlier steps' proposals
applied) flow through ``map_batches`` on a pool of ``--workers`` actors, each holding one
block instance (set up once: one model load per actor), reading media from the project's
blob store (a local folder serves a cluster on this machine or a shared file system; object
storage serves any). Results stream back to the driver as they finish and are written by the
same step writer as in-process results, every few seconds: a driver killed part way keeps
what was written, and the job resumes from there. A worker that dies is restarted by Ray and
its batch retried. Blocks need no change: the actor calls the block as the in-process
executor does (one bad sample fails alone).

Ray is an optional extra (``pip install labelblocks[ray]``), imported only here.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import sys
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..blocks import Block, BlockContext, SampleFailure, SampleInput
from ..errors import InvalidInput, StopJob
from ..model import Sample, SampleChange
from ..store import Store
from ..store.blobs import open_blob_store
from ..store.proposals import change_json
from .base import StepPlan, StepResults
from .inprocess import label_batch, overlaid


@dataclass(frozen=True)
class RayEngine:
    """Where and how wide model steps run: the cluster's address (``auto``: the one running on
    this machine; ``ray://HOST:PORT`` or ``HOST:PORT``; None: start one for this process),
    the number of actors, and the GPUs each takes (a block may ask for more)."""

    address: str | None = None
    workers: int = 1
    gpus_per_worker: float = 0.0

    def check(self) -> None:
        if self.workers < 1:
            raise InvalidInput(f"--workers: expected at least 1, got {self.workers}")
        if self.gpus_per_worker < 0:
            raise InvalidInput(f"--gpus-per-worker: expected 0 or more, got {self.gpus_per_worker}")


def import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise InvalidInput("--engine ray needs Ray: pip install 'labelblocks[ray]'") from None
    return ray


_STORAGE_ENV = ("AWS_", "GOOGLE_APPLICATION_CREDENTIALS", "AZURE_STORAGE_")  # object storage's settings
_CONNECTED: list[str | None] = []  # the address this process is connected to


def connect(engine: RayEngine) -> Any:
    """Ray, connected to the engine's cluster (once per process and address)."""
    ray = import_ray()
    if ray.is_initialized() and [engine.address] != _CONNECTED:
        ray.shutdown()
    if not ray.is_initialized():
        _reachable(engine.address)
        _CONNECTED[:] = [engine.address]
        try:
            ray.init(address=engine.address, log_to_driver=False, include_dashboard=False,
                     configure_logging=False, ignore_reinit_error=True)
        except (ConnectionError, RuntimeError, ValueError) as e:
            raise InvalidInput(f"--ray-address {engine.address}: cannot connect to the Ray cluster: {e}") from None
        ray.data.DataContext.get_current().enable_progress_bars = False
        logging.getLogger("ray.data").setLevel(logging.WARNING)  # the job's own progress is shown
    return ray


def _reachable(address: str | None, timeout: float = 5.0) -> None:
    """A cluster at HOST:PORT (or ray://HOST:PORT) answers within ``timeout`` seconds: Ray's
    own connection attempts go on for minutes."""
    if address is None or address == "auto":
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise InvalidInput(f"--ray-address {address}: expected auto, HOST:PORT or ray://HOST:PORT")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as e:
        raise InvalidInput(f"--ray-address {address}: cannot connect to the Ray cluster: {e.strerror or e}") from None


class _Input(SampleInput):
    """A sample as the actor received it; notes whether the block looked at it."""

    __slots__ = ("looked",)

    def __init__(self, sample: Sample, read: Callable[[], bytes]) -> None:
        super().__init__(sample, read)
        self.looked = False

    @property
    def sample(self) -> Sample:
        self.looked = True
        return self._sample

    def read_bytes(self) -> bytes:
        self.looked = True
        return self._read()


class BlockActor:
    """One Ray actor: a block instance, set up once, labelling the batches it is given."""

    def __init__(self, cls: type[Block], args: dict[str, Any], secrets: dict[str, str], job_id: int, preview: bool,
                 blobs: str) -> None:
        self.cache = Path(tempfile.mkdtemp(prefix="labelblocks-ray-"))
        self.blobs = open_blob_store(blobs, self.cache / "blob-cache")
        self.args = args
        self.context = BlockContext(secrets=secrets, job_id=job_id, preview=preview, cache_dir=self.cache / "cache")
        self.block = cls()
        self.block.setup(args, self.context)

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        inputs = [_Input(Sample.model_validate_json(text), _reader(self.blobs, h))
                  for text, h in zip(batch["sample"], batch["hash"], strict=True)]
        try:
            outs: list[Any] = label_batch(self.block, inputs, self.args, self.context)
        except StopJob as e:
            outs = [StopJob(str(e))] * len(inputs)
        changes, errors, records = [], [], []
        for sid, out in zip(batch["id"], outs, strict=True):
            record = self.context.records.pop(int(sid), None)
            if isinstance(out, SampleChange):
                changes.append(change_json(out))
                errors.append("")
                records.append(json.dumps(record) if record else "")
            else:
                changes.append("")
                errors.append(("stop:" if isinstance(out, StopJob) else "fail:")
                              + (out.error if isinstance(out, SampleFailure) else str(out)))
                records.append("")
        usage = json.dumps(self.context.usage)
        self.context.usage.clear()
        return {"id": batch["id"], "change": changes, "error": errors, "record": records,
                "looked": [i.looked for i in inputs], "usage": [usage] + [""] * (len(inputs) - 1)}


def _reader(blobs: Any, content_hash: str) -> Callable[[], bytes]:
    return lambda: blobs.read(content_hash)


class RayExecutor:
    """A step of an in-process block, run on a Ray cluster (:class:`RayEngine`)."""

    needs_revisions = False
    streams = True  # the whole step in one run(); results written as they come back

    def __init__(self, store: Store, job_id: int, plan: StepPlan, preview: bool, secrets: list[str],
                 engine: RayEngine) -> None:
        engine.check()
        self.store, self.job_id, self.plan, self.secrets, self.engine = store, job_id, plan, secrets, engine
        self.preview = preview
        self.args = dict(plan.resolved.values)
        self.usage: dict[str, float] = {}
        self._quiet = contextlib.ExitStack()

    def batch_size(self, todo: int) -> int:
        return todo

    def run(self, ids: list[int], revisions: Mapping[int, float], results: StepResults,
            on_progress: Callable[[int], None]) -> None:
        # Ray prints the cluster's notes (a task retried on a restarted actor) on stdout, from a
        # thread of its own, until it disconnects: keep them off stdout, where --json output goes
        self._quiet.enter_context(contextlib.redirect_stdout(sys.stderr))
        ray = connect(self.engine)
        cls = self.plan.block.cls
        pairs, revs = overlaid(self.store, self.job_id, ids, self.plan.index)
        gone = set(ids) - {stored.id for stored, _ in pairs}
        results.failed += [(sid, f"sample {sid} was deleted") for sid in ids if sid in gone]
        rows = [{"id": cur.id, "sample": cur.model_dump_json(), "hash": stored.content_hash} for stored, cur in pairs]
        if not rows:
            return
        bs = max(1, cls().batch_size(self.args)) if not cls.needs_all_samples else len(rows)
        gpus = max(self.engine.gpus_per_worker, cls.gpus)
        remote: dict[str, Any] = {"max_restarts": -1, "max_task_retries": -1}  # a dead worker: restarted, batch retried
        if cls.memory_mb:
            remote["memory"] = cls.memory_mb * 1024 * 1024
        if "://" in self.store.blobs.location:  # the actors read media from object storage as this process does
            remote["runtime_env"] = {"env_vars": {k: v for k, v in os.environ.items() if k.startswith(_STORAGE_ENV)}}
        blocks = min(len(rows), max(4 * self.engine.workers, min(len(rows) // bs, 200)))  # every actor gets work
        ds = ray.data.from_items(rows, override_num_blocks=blocks).map_batches(
            BlockActor, batch_size=bs, batch_format="numpy", concurrency=self.engine.workers, num_gpus=gpus or None,
            num_cpus=1 if not gpus else None, max_concurrency=1, **remote,
            fn_constructor_kwargs={"cls": cls, "args": self.args, "secrets": dict(self.plan.secrets),
                                   "job_id": self.job_id, "preview": self.preview,
                                   "blobs": self.store.blobs.location})
        done = 0
        for out in ds.iter_batches(batch_size=None, batch_format="numpy", prefetch_batches=1):
            self._collect(out, revs, results)
            done += len(out["id"])
            on_progress(done)

    def _collect(self, out: dict[str, Any], revs: Mapping[int, float], results: StepResults) -> None:
        reads = self.plan.block.cls.reads_samples
        for sid, change, error, record, looked, usage in zip(
                out["id"], out["change"], out["error"], out["record"], out["looked"], out["usage"], strict=True):
            sid = int(sid)
            if usage:
                for k, v in json.loads(str(usage)).items():
                    self.usage[k] = self.usage.get(k, 0) + v
            if error:
                kind, _, message = str(error).partition(":")
                if kind == "stop":
                    raise StopJob(message)
                results.failed.append((sid, message))
                continue
            rev = revs.get(sid) if reads and bool(looked) else None
            results.texts.append((sid, str(change), str(record) or None, rev))

    def take_usage(self) -> dict[str, float]:
        usage, self.usage = self.usage, {}
        return usage

    def close(self) -> None:
        """Disconnect from the cluster (its actors end with the step) and stop keeping Ray's
        notes off stdout."""
        with self._quiet:
            ray = import_ray()
            if ray.is_initialized():
                ray.shutdown()
                _CONNECTED.clear()
