"""Running an external block's step: a program or container image with a parameters.json,
talking to the project over the protocol's HTTP API.

For each external step the executor:

- serves the project's protocol API (:mod:`labelblocks.api`) on loopback (an ephemeral
  port) with a key valid only for this step of this job;
- runs the program (or ``docker run`` with the same argv and environment) with the argv the
  contract prescribes, always with ``--propose-actions JOB``: the block's results, and even
  direct writes it makes, are staged as the step's proposals; the runner applies them, as
  for in-process blocks, so preview, apply, caching and resume behave the same;
- gives it the environment the contract lists (``EI_API_ENDPOINT``, ``EI_PROJECT_API_KEY``,
  ...), the secrets its parameters.json declares, a few harmless variables of the runner's
  own environment (PATH, HOME, locale), and nothing else;
- streams its output into the job's log with every secret redacted, enforces a time limit,
  and records a non-zero exit as the failure of the step's unfinished samples, with the
  log's tail.
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from ..api import JobScope, LoopbackServer, create_api_app
from ..blocks import SampleFailure
from ..errors import InvalidInput
from ..external_blocks import ExternalBlock
from ..parameters import render_argv, write_ids_file
from ..secrets import redact
from ..store import Store
from ..store.jobs import job_log_path
from .base import StepPlan, StepResults, pid_alive

PASS_ENV = ("PATH", "HOME", "USER", "LANG", "LANGUAGE", "TZ", "TMPDIR", "TERM", "SYSTEMROOT", "PYTHONPATH",
            "VIRTUAL_ENV", "SSL_CERT_FILE", "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE", "HF_HOME", "HF_HUB_OFFLINE",
            "TRANSFORMERS_OFFLINE", "DOCKER_HOST", "DOCKER_CONFIG")
LOG_TAIL = 30  # lines of a failed block's output kept with each failed sample


class ExternalExecutor:
    """A step of an external block: one process (or container) for all of the step's samples."""

    needs_revisions = True
    streams = False

    def __init__(self, store: Store, job_id: int, plan: StepPlan, secrets: list[str]) -> None:
        self.store, self.job_id, self.plan, self.secrets = store, job_id, plan, secrets

    def batch_size(self, todo: int) -> int:
        return todo

    def run(self, ids: list[int], revisions: Mapping[int, float], results: StepResults,
            on_progress: Callable[[int], None]) -> None:
        # the block's own proposals are already stored (by the API, as they arrived)
        left = run_external_step(self.store, self.job_id, self.plan, {sid: revisions[sid] for sid in ids},
                                 self.secrets, on_progress)
        for sid, ext in left.items():
            if isinstance(ext, SampleFailure):
                results.failed.append((sid, ext.error))
            else:
                results.texts.append((sid, ext, None, revisions.get(sid)))

    def take_usage(self) -> dict[str, float]:
        return {}

    def close(self) -> None:
        pass


class _LogWriter:
    """Appends a process's output to the job log, line by line, secrets redacted; keeps a tail."""

    def __init__(self, path: Path, prefix: str, secrets: list[str]) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file = path.open("a", encoding="utf-8")
        self._prefix = prefix
        self._secrets = secrets
        self.tail: deque[str] = deque(maxlen=LOG_TAIL)

    def line(self, text: str) -> None:
        text = redact(text.rstrip("\n"), self._secrets)
        self.tail.append(text)
        self._file.write(f"{self._prefix} {text}\n")
        self._file.flush()

    def pump(self, stream: Any) -> None:
        for raw in iter(stream.readline, b""):
            self.line(raw.decode("utf-8", errors="replace"))
        stream.close()

    def close(self) -> None:
        self._file.close()


def _environment(api_url: str, host: str, key: str, secrets: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k in PASS_ENV or k.startswith("LC_")}
    env.update({"EI_API_ENDPOINT": api_url, "EI_PROJECT_API_KEY": key, "EI_API_KEY": key,
                "EI_PROJECT_ID": "1", "EI_ORGANIZATION_ID": "0", "EI_INGESTION_HOST": host,
                "PYTHONUNBUFFERED": "1"})
    env.update(secrets)
    return env


def _docker_argv(cls: type[ExternalBlock], env: dict[str, str], mount: str, name: str, argv: list[str]) -> list[str]:
    """``docker run`` with the block's argv; environment values pass by name (-e NAME), so no
    secret is ever on a command line. Host networking lets the container reach the loopback API."""
    out = ["docker", "run", "--rm", "--init", "--name", name, "--network", "host", "-v", f"{mount}:{mount}:ro"]
    for k in sorted(env):
        if k not in PASS_ENV or k.startswith("EI_"):
            out += ["-e", k]
    return [*out, str(cls.image), *cls.command, *argv]


def _work_folder(store: Store, job_id: int, step: int) -> Path:
    """A new folder for one external step's files (the ids file), under the project's
    ``.labelblocks/tmp``, named after this process. Folders that processes no longer running
    left there (killed with SIGKILL, so before they could clean up) are removed first."""
    root = store.root / "tmp"
    root.mkdir(exist_ok=True)
    for old in root.glob("job*-step*-pid*"):
        pid = old.name.rsplit("-pid", 1)[1]
        if pid.isdigit() and int(pid) != os.getpid() and not pid_alive(int(pid)):
            shutil.rmtree(old, ignore_errors=True)
    return Path(tempfile.mkdtemp(prefix=f"job{job_id}-step{step}-", suffix=f"-pid{os.getpid()}", dir=root))


def run_external_step(store: Store, job_id: int, plan: StepPlan, revisions: dict[int, float],
                      all_secrets: list[str],
                      on_progress: Callable[[int], None] | None = None) -> dict[int, SampleFailure | str]:
    """Run an external block on the samples of ``revisions`` (of ``job_id``; their revisions
    read before the block starts), staging its results as step ``plan.index`` proposals.
    Returns what to record for samples it left without a proposal: an empty change when it
    exited cleanly, else the failure."""
    cls = plan.block.cls
    assert issubclass(cls, ExternalBlock)
    need = list(revisions)
    scope = JobScope(job_id=job_id, step=plan.index, sample_ids=frozenset(need), revisions=revisions,
                     secrets=tuple(all_secrets))
    tmp = _work_folder(store, job_id, plan.index)
    rc: int | None = None
    error: str | None = None
    try:
        ids_file = tmp / "data-ids.json"
        write_ids_file(ids_file, need)
        with LoopbackServer(create_api_app(store, store.root.parent.resolve())) as server:
            key = server.state.add_job_key(scope)
            log = _LogWriter(job_log_path(store, job_id), f"[step {plan.index} {plan.block.name}]", [*all_secrets, key])
            try:
                env = _environment(server.url, server.host, key, plan.secrets)
                block_argv = render_argv(plan.resolved, data_ids_file=ids_file, propose_actions=job_id)
                container = f"labelblocks-job{job_id}-step{plan.index}-{os.getpid()}"
                if cls.kind == "image":
                    argv, cwd = _docker_argv(cls, env, str(tmp), container, block_argv), str(tmp)
                else:
                    argv, cwd = [*cls.command, *block_argv], cls.directory or str(tmp)
                log.line(f"$ {shlex.join(argv)}")
                rc, error = _supervise(argv, cwd, env, cls, container, log, scope, on_progress)
                missing = [sid for sid in need if sid not in scope.proposed]
                if missing and error is None and rc == 0:
                    log.line(f"the block proposed no change for {len(missing)} of its {len(need)} samples")
            finally:
                server.state.remove_job_key(key)
                log.close()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if on_progress:
        on_progress(len(scope.proposed))
    if error is None and rc != 0:
        error = f"block {cls.name} exited with code {rc}"
    if error is None:
        return {sid: "{}" for sid in missing}  # finished without a change for these samples
    tail = "\n".join(log.tail)
    return {sid: SampleFailure(f"{error}; last output:\n{tail}" if tail else error) for sid in missing}


def _supervise(argv: list[str], cwd: str, env: dict[str, str], cls: type[ExternalBlock], container: str,
               log: _LogWriter, scope: JobScope, on_progress: Callable[[int], None] | None) -> tuple[int | None, str | None]:
    """Run the block's process to its end (or its time limit), its output into the log;
    (exit code, error). Ctrl-C or any failure here stops the process."""
    try:
        proc = subprocess.Popen(argv, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    except OSError as e:
        raise InvalidInput(f"block {cls.name}: cannot start {argv[0]!r}: {e.strerror or e}"
                           + (" (is Docker installed?)" if cls.kind == "image" else "")) from None
    reader = threading.Thread(target=log.pump, args=(proc.stdout,), daemon=True)
    reader.start()
    deadline = time.monotonic() + cls.timeout if cls.timeout else None
    rc: int | None = None
    error: str | None = None
    try:
        while True:
            try:
                rc = proc.wait(timeout=0.2)
                break
            except subprocess.TimeoutExpired:
                pass
            if on_progress:
                on_progress(len(scope.proposed))
            if deadline is not None and time.monotonic() > deadline:
                _stop(proc, cls, container)
                error = f"block {cls.name} ran past its time limit of {cls.timeout:g} s and was stopped"
                log.line(error)
                break
    except BaseException:
        _stop(proc, cls, container)
        raise
    reader.join(timeout=5)
    return rc, error


def _stop(proc: subprocess.Popen[bytes], cls: type[ExternalBlock], container: str) -> None:
    if cls.kind == "image":
        subprocess.run(["docker", "kill", container], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                       check=False, timeout=30)
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=5)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()

