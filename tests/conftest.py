from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner, Result
from PIL import Image

from labelblocks.cli import main
from labelblocks.project import DATA_DIR, init_project, open_store
from labelblocks.store import Store

from .services import postgres_cluster


def make_image(path: Path, size: tuple[int, int] = (64, 48), seed: int = 0, mode: str = "RGB", **save: Any) -> Path:
    """A real image file of ``size`` (width, height) with random content."""
    rng = np.random.default_rng(seed)
    w, h = size
    path.parent.mkdir(parents=True, exist_ok=True)
    if mode == "I;16":
        img = Image.fromarray(rng.integers(0, 65535, (h, w), dtype=np.uint16))
    else:
        img = Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8), "RGB")
        if mode != "RGB":
            img = img.convert(mode)
    img.save(path, **save)
    return path


def make_audio(path: Path, seconds: float = 1.0, rate: int = 16000, channels: int = 1, seed: int = 0,
               fmt: str | None = None) -> Path:
    import soundfile as sf

    rng = np.random.default_rng(seed)
    n = int(seconds * rate)
    data = (rng.standard_normal((n, channels)) * 0.1).astype("float32")
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, data, rate, format=fmt)
    return path


class Cli:
    """The real CLI, called through click's CliRunner against one project."""

    def __init__(self, project: Path) -> None:
        self.project = project
        self.runner = CliRunner()

    def __call__(self, *args: str, input: str | None = None, expect: int | None = 0,
                 env: dict[str, str] | None = None) -> Result:
        r = self.runner.invoke(main, ["--project", str(self.project), *args], input=input,
                               catch_exceptions=True, env=env)
        if expect is not None and r.exit_code != expect:
            tb = "".join(traceback.format_exception(*r.exc_info)) if r.exc_info and r.exception else ""
            raise AssertionError(
                f"labelblocks {' '.join(args)} exited {r.exit_code}, expected {expect}\n"
                f"stdout:\n{r.stdout}\nstderr:\n{r.stderr}\n{tb}"
            )
        return r

    def json(self, *args: str, **kw: Any) -> Any:
        r = self(*args, "--json", **kw)
        return json.loads(r.stdout)


# the dialect of projects of tests that do not choose (LABELBLOCKS_TEST_DIALECT=postgresql runs the
# whole suite's projects on PostgreSQL)
DIALECT = os.environ.get("LABELBLOCKS_TEST_DIALECT", "sqlite")


@pytest.fixture
def project(tmp_path: Path, request: pytest.FixtureRequest) -> Path:
    """A new project: on SQLite, or (parametrized "postgresql" by a module's
    :func:`both_dialects`) in a new database of the session's PostgreSQL server."""
    database = None
    if getattr(request, "param", DIALECT) == "postgresql":
        database = request.getfixturevalue("postgres_database")
    return init_project(tmp_path / "proj", database=database)


def both_dialects(metafunc: pytest.Metafunc) -> None:
    """A module's ``pytest_generate_tests``: its tests that use a project run on SQLite and on
    PostgreSQL."""
    if "project" in metafunc.fixturenames:
        metafunc.parametrize("project", ["sqlite", "postgresql"], indirect=True)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    """A PostgreSQL server from the Debian binaries, on loopback, for the session; its URL
    without a database."""
    with postgres_cluster() as url:
        yield url


_DATABASES = iter(range(1, 1_000_000))


@pytest.fixture
def postgres_database(postgres_server: str) -> str:
    """A new, empty database on the session's PostgreSQL server; its URL."""
    import psycopg

    name = f"t{os.getpid()}_{next(_DATABASES)}"
    with psycopg.connect(postgres_server.replace("+psycopg", "") + "/postgres", autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    return f"{postgres_server}/{name}"


@pytest.fixture
def cli(project: Path) -> Cli:
    return Cli(project)


@pytest.fixture
def store(project: Path) -> Store:
    s = open_store(project)
    yield s  # type: ignore[misc]
    s.close()


@pytest.fixture
def images(tmp_path: Path) -> Callable[..., list[Path]]:
    def build(folder: str = "imgs", names: list[str] | None = None, n: int = 3, **kw: Any) -> list[Path]:
        names = names or [f"cat.{i}.png" for i in range(n)]
        return [make_image(tmp_path / folder / name, seed=i, **kw) for i, name in enumerate(names)]

    return build


def blob_files(project: Path) -> list[Path]:
    return [p for p in (project / DATA_DIR / "blobs").rglob("*") if p.is_file()]


def corrupt_stored_copy(project: Path, original: Path, garbage: bytes) -> None:
    """Overwrite the project's stored copy of ``original`` (a file that went bad on disk after
    upload: uploads refuse corrupt files)."""
    blob = next(p for p in blob_files(project) if p.read_bytes() == original.read_bytes())
    blob.chmod(0o644)
    blob.write_bytes(garbage)


@pytest.fixture(autouse=True)
def _isolate_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No test sees the developer's project, secrets or plugins."""
    for k in list(os.environ):
        if k.startswith("LABELBLOCKS_") or k.startswith("EI_"):
            monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("LABELBLOCKS_CONFIG_DIR", str(tmp_path / "config"))


REPO = Path(__file__).resolve().parent.parent


def fake_docker(tmp_path: Path, images: dict[str, dict]) -> tuple[Path, Path]:
    """A `docker` command (tests/external_blocks/fake_docker.py) in a new bin folder; (that
    folder, the log of its calls)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "docker.jsonl"
    config = tmp_path / "docker.json"
    config.write_text(json.dumps({"log": str(log), "images": images}))
    launcher = bin_dir / "docker"
    launcher.write_text(f"#!/bin/sh\nexec {sys.executable} {REPO / 'tests' / 'external_blocks' / 'fake_docker.py'} {config} \"$@\"\n")
    launcher.chmod(0o755)
    return bin_dir, log


def default_sigint() -> None:
    """A child's SIGINT back to the default (a process started in the background of a
    non-interactive shell, as CI may start the tests, inherits SIGINT ignored)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


class ProjectSQL:
    """A project's database for a test's own queries, on either dialect (``?`` placeholders);
    each query sees what was committed when it runs."""

    def __init__(self, project: Path) -> None:
        self.store = open_store(project)

    def __enter__(self) -> ProjectSQL:
        return self

    def __exit__(self, *exc: object) -> None:
        self.store.close()

    def execute(self, sql: str, params: Any = ()) -> _Rows:
        from labelblocks.store.dialect import run

        with self.store.engine.connect() as conn:
            return _Rows([tuple(r) for r in run(conn, sql, tuple(params)).fetchall()])


class _Rows(list):  # type: ignore[type-arg]
    def fetchone(self) -> Any:
        return self[0] if self else None

    def fetchall(self) -> list[Any]:
        return list(self)


def project_sql(project: Path) -> ProjectSQL:
    return ProjectSQL(project)


def kill_when(proc: subprocess.Popen[bytes], project: Path, count_sql: str, at_least: int, timeout: float = 60) -> None:
    """SIGKILL ``proc`` as soon as ``count_sql`` counts ``at_least`` rows in the project's
    database (or after ``timeout`` seconds), and reap it."""
    db = project_sql(project)
    deadline = time.time() + timeout
    while time.time() < deadline:
        time.sleep(0.1)
        if db.execute(count_sql).fetchone()[0] >= at_least:
            break
    proc.kill()
    proc.wait()


def make_fake_distribution(root: Path, name: str = "fakeblocks", module: str = "tests.fake_blocks",
                           version: str = "1.2.3", entry: str | None = None) -> Path:
    """A real installed-distribution layout (dist-info with entry_points.txt) in ``root``."""
    dist = root / f"{name}-{version}.dist-info"
    dist.mkdir(parents=True, exist_ok=True)
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    (dist / "entry_points.txt").write_text(f"[labelblocks]\n{entry or name} = {module}\n")
    return root


@pytest.fixture(autouse=True)
def fake_plugin(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Installs the fake block plugin as a distribution on sys.path (and PYTHONPATH for
    subprocesses), so plugin discovery finds it through its entry point."""
    import importlib

    from labelblocks import plugins

    root = tmp_path_factory.getbasetemp() / "fake-dist"
    if not root.exists():
        make_fake_distribution(root)
    monkeypatch.syspath_prepend(str(root))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(root), str(REPO)]))
    importlib.invalidate_caches()
    plugins.reset()
    yield root  # type: ignore[misc]
    plugins.reset()


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Where the web tests saved their screenshots (CI prints them in its log)."""
    web = sys.modules.get("tests.test_web")
    if web is not None and web.TAKEN:
        terminalreporter.write_sep("-", "screenshots of the review page")
        for path in sorted(set(web.TAKEN)):
            terminalreporter.write_line(str(path))
