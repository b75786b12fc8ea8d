"""External blocks: any program or container image with a parameters.json, talking to the
project over the protocol's HTTP API.

``labelblocks blocks add DIR`` registers a block folder (its parameters.json and the command
to run: given, or taken from its Dockerfile's ENTRYPOINT / CMD); ``blocks add --image``
registers a container image. At run time each external step:

- serves the project on loopback (an ephemeral port) with a key valid only for this step of
  this job;
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

import hashlib
import json
import os
import shlex
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from sqlalchemy import delete, insert, select

from .blocks import Block, SampleFailure
from .errors import InvalidInput, NotFound
from .parameters import load_parameters, render_argv, write_ids_file
from .secrets import redact
from .store import Store
from .store.schema import external_blocks

if TYPE_CHECKING:
    from .plugins import BlockRegistry
    from .runner import Runner, StepPlan
    from .server import JobScope

EXTERNAL_PLUGIN = "external"
PASS_ENV = ("PATH", "HOME", "USER", "LANG", "LANGUAGE", "TZ", "TMPDIR", "TERM", "SYSTEMROOT", "PYTHONPATH",
            "VIRTUAL_ENV", "SSL_CERT_FILE", "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE", "HF_HOME", "HF_HUB_OFFLINE",
            "TRANSFORMERS_OFFLINE", "DOCKER_HOST", "DOCKER_CONFIG")
LOG_TAIL = 30  # lines of a failed block's output kept with each failed sample


class ExternalBlock(Block):
    """A registered external block (a subclass is made per registered block)."""

    kind: ClassVar[str] = "command"  # command | image
    command: ClassVar[list[str]] = []
    directory: ClassVar[str | None] = None
    image: ClassVar[str | None] = None
    timeout: ClassVar[float | None] = None

    @classmethod
    def describe(cls) -> str:
        if cls.kind == "image":
            return f"container image {cls.image}" + (f" with {shlex.join(cls.command)}" if cls.command else "")
        return f"{shlex.join(cls.command)} (in {cls.directory})"


# --- registering ---------------------------------------------------------------------------------


def dockerfile_command(dockerfile: Path) -> list[str] | None:
    """The command a Dockerfile runs: its last ENTRYPOINT (exec or shell form), else its last
    CMD; None if it has neither."""
    entry: list[str] | None = None
    cmd: list[str] | None = None
    text = dockerfile.read_text(encoding="utf-8", errors="replace").replace("\\\n", " ")
    for line in text.splitlines():
        parts = line.strip().split(None, 1)
        if len(parts) != 2 or parts[0].upper() not in ("ENTRYPOINT", "CMD"):
            continue
        arg = parts[1].strip()
        value: list[str]
        if arg.startswith("["):
            try:
                parsed = json.loads(arg)
            except json.JSONDecodeError:
                raise InvalidInput(f"{dockerfile}: cannot read {parts[0]} {arg!r} (expected a JSON array)") from None
            if not isinstance(parsed, list) or not all(isinstance(x, str) for x in parsed):
                raise InvalidInput(f"{dockerfile}: {parts[0]} must be a JSON array of strings")
            value = parsed
        else:
            value = shlex.split(arg)
        if parts[0].upper() == "ENTRYPOINT":
            entry = value
        else:
            cmd = value
    return entry if entry else cmd


def _version(spec: dict[str, Any], kind: str, command: Sequence[str], image: str | None, directory: str | None) -> str:
    """Changes when the block's definition or its folder's files change (cache keys use it)."""
    h = hashlib.sha256(json.dumps([spec, kind, list(command), image], sort_keys=True).encode())
    if directory and Path(directory).is_dir():
        for n, p in enumerate(sorted(Path(directory).rglob("*"))):
            if n >= 5000:
                break
            if p.is_file() and "__pycache__" not in p.parts:
                st = p.stat()
                h.update(f"{p}:{st.st_size}:{st.st_mtime_ns}".encode())
    return "ext-" + h.hexdigest()[:10]


def add_block(store: Store, registry: BlockRegistry, path: Path | None = None, command: str | None = None,
              image: str | None = None, parameters: Path | None = None, name: str | None = None,
              timeout: float | None = None, replace: bool = False) -> str:
    """Register an external block; returns its name. A folder needs a parameters.json; an
    image needs ``parameters`` (its parameters.json)."""
    if (path is None) == (image is None):
        raise InvalidInput("give a block folder, or --image IMAGE with --parameters FILE")
    directory: str | None = None
    argv: list[str] = []
    if path is not None:
        path = path.resolve()
        if not path.is_dir():
            raise InvalidInput(f"{path} is not a folder: expected a block folder with a parameters.json")
        params_file = parameters or path / "parameters.json"
        if not params_file.exists():
            raise InvalidInput(f"{path} has no parameters.json: a block folder needs one (or pass --parameters)")
        if command:
            argv = shlex.split(command)
        elif (path / "Dockerfile").exists():
            argv = dockerfile_command(path / "Dockerfile") or []
            if not argv:
                raise InvalidInput(f"{path / 'Dockerfile'} has no ENTRYPOINT or CMD: pass --command \"...\"")
        else:
            raise InvalidInput(f"{path} has no Dockerfile to take the command from: pass --command \"...\"")
        if not argv:
            raise InvalidInput("--command is empty")
        program = argv[0]
        if not (shutil.which(program) or shutil.which(program, path=str(path)) or (path / program).is_file()):
            raise InvalidInput(f"cannot find the block's program {program!r} on PATH or in {path}: "
                               "install it, or give the right one with --command")
        directory = str(path)
        kind = "command"
    else:
        if parameters is None:
            raise InvalidInput(f"--image {image}: also pass --parameters FILE (the image's parameters.json)")
        params_file = parameters
        argv = shlex.split(command) if command else []  # arguments before the protocol's, after the image
        kind = "image"
    spec = load_parameters(params_file)
    doc = spec.model_dump(by_alias=True, exclude_none=True)
    block_name = name or (Path(directory).name if directory else str(image).rsplit("/", 1)[-1].split(":")[0])
    block_name = "".join(ch if ch.isalnum() or ch in "-_." else "-" for ch in block_name).strip("-") or "block"
    if block_name in registry.blocks and registry.blocks[block_name].plugin != EXTERNAL_PLUGIN:
        raise InvalidInput(f"a block named {block_name!r} comes from plugin {registry.blocks[block_name].plugin}: "
                           "pick another with --name")
    with store.transaction() as conn:
        exists = conn.execute(select(external_blocks.c.name).where(external_blocks.c.name == block_name)).first()
        if exists and not replace:
            raise InvalidInput(f"an external block named {block_name!r} is registered: pass --replace, or --name")
        if exists:
            conn.execute(delete(external_blocks).where(external_blocks.c.name == block_name))
        conn.execute(insert(external_blocks).values(
            name=block_name, kind=kind, directory=directory, command=json.dumps(argv), image=image,
            parameters=json.dumps(doc), timeout=timeout, created_at=time.time()))
    return block_name


def remove_block(store: Store, name: str) -> None:
    with store.transaction() as conn:
        n = conn.execute(delete(external_blocks).where(external_blocks.c.name == name)).rowcount
    if not n:
        raise NotFound(f"no external block named {name!r}: see `labelblocks blocks list`")


def external_classes(store: Store) -> list[tuple[type[ExternalBlock], str]]:
    """(block class, version) of every external block registered in the project."""
    with store.engine.connect() as conn:
        rows = conn.execute(select(external_blocks).order_by(external_blocks.c.name)).all()
    out = []
    for r in rows:
        spec = json.loads(r.parameters)
        attrs = {"name": r.name, "parameters": spec, "kind": r.kind, "command": json.loads(r.command or "[]"),
                 "directory": r.directory, "image": r.image, "timeout": r.timeout, "__doc__": spec["info"].get("description")}
        cls = type(f"External_{r.name}", (ExternalBlock,), attrs)
        out.append((cls, _version(spec, r.kind, attrs["command"], r.image, r.directory)))
    return out


def add_to_registry(registry: BlockRegistry, store: Store) -> BlockRegistry:
    """``registry`` with the project's external blocks added (a new registry)."""
    from .plugins import BlockRegistry

    reg = BlockRegistry()
    reg.blocks = dict(registry.blocks)
    for cls, version in external_classes(store):
        if cls.name in reg.blocks:
            continue  # a plugin's block of that name wins; `blocks add` refuses such names
        reg.register(cls, EXTERNAL_PLUGIN, version)
    return reg


# --- running -------------------------------------------------------------------------------------


def job_log_path(store: Store, job_id: int) -> Path:
    return store.root / "logs" / f"job-{job_id}.log"


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


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, someone else's
        return True
    return True


def run_external_step(runner: Runner, job_id: int, plan: StepPlan, revisions: dict[int, float],
                      all_secrets: list[str],
                      on_progress: Callable[[int], None] | None = None) -> dict[int, SampleFailure | str]:
    """Run an external block on the samples of ``revisions`` (of ``job_id``; their revisions
    read before the block starts), staging its results as step ``plan.index`` proposals.
    Returns what to record for samples it left without a proposal: an empty change when it
    exited cleanly, else the failure."""
    from .server import BackgroundServer, JobScope

    cls = plan.block.cls
    assert issubclass(cls, ExternalBlock)
    store = runner.store
    need = list(revisions)
    scope = JobScope(job_id=job_id, step=plan.index, sample_ids=frozenset(need), revisions=revisions)
    tmp = _work_folder(store, job_id, plan.index)
    rc: int | None = None
    error: str | None = None
    try:
        ids_file = tmp / "data-ids.json"
        write_ids_file(ids_file, need)
        with BackgroundServer(store.root.parent, store=store) as server:
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

