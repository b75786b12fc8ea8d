"""`--engine ray`: model steps on a real Ray cluster started on loopback (a head and one more
node, each with one CPU and a small object store): the same proposals as in-process, byte for
byte, for a two-step action (a tiny OWL-ViT and relabel); secrets reach the actors; a worker
killed mid-step and the job still completing; a driver killed mid-step and the run resuming."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from labelblocks.project import init_project, open_store
from labelblocks.server import BackgroundServer
from labelblocks.store.keys import create_key

from .blocks.tiny_models import make_owl
from .conftest import REPO, Cli, kill_when, make_image, project_sql
from .services import ray_cluster
from .test_blobs import bucket  # noqa: F401  (the S3-compatible server fixture)

ray = pytest.importorskip("ray")  # the [ray] extra; .ci/run installs it


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """A Ray cluster on loopback: its address, and the log file the fake blocks write."""
    log = tmp_path_factory.mktemp("ray") / "blocks.log"
    fake = tmp_path_factory.getbasetemp() / "fake-dist"
    env = {"PYTHONPATH": os.pathsep.join([str(fake), str(REPO)]), "FAKE_BLOCKS_LOG": str(log)}
    with ray_cluster([1, 1], env, object_store_mb=80) as address:  # a head and one more node
        try:
            yield address, log
        finally:
            if ray.is_initialized():
                ray.shutdown()


def _dataset(project: Path, tmp_path: Path, n: int) -> Cli:
    cli = Cli(project)
    for i in range(n):
        make_image(tmp_path / "imgs" / f"cat.{i}.png", size=(64, 48), seed=i)
    cli("upload", str(tmp_path / "imgs"))
    return cli


def _proposals(project: Path, job: int) -> list[tuple[int, int, str]]:
    """The job's proposals as stored: (sample, step, change text)."""
    rows = project_sql(project).execute(f"SELECT sample_id, step, change FROM proposals WHERE job_id = {job} "
                                        "ORDER BY sample_id, step")
    return [tuple(r) for r in rows.fetchall()]


def test_a_two_step_action_gives_the_same_proposals_on_ray(cluster: tuple[str, Path], tmp_path: Path) -> None:
    address, _ = cluster
    model = make_owl(tmp_path / "owl")
    project = init_project(tmp_path / "proj")
    cli = _dataset(project, tmp_path, 6)
    cli("actions", "create", "boxes", "--step", "owlvit", "-p", f"model={model}", "-p", "prompt=a cat (cat, 0.0)",
        "-p", "batch-size=2", "--step", "relabel", "-p", "mapping=cat -> kitten", "-p", "apply-to=both")
    here = cli.json("actions", "preview", "boxes", "--limit", "6", "--no-cache")
    there = cli.json("actions", "preview", "boxes", "--limit", "6", "--no-cache", "--engine", "ray",
                     "--ray-address", address, "--workers", "2")
    assert there["computed"] == here["computed"] == 12 and there["failed"] == 0
    assert _proposals(project, there["jobId"]) == _proposals(project, here["jobId"])
    assert any("kitten" in change for _, step, change in _proposals(project, there["jobId"]) if step == 2)
    # a run on Ray applies what the in-process preview proposed
    run = cli.json("actions", "run", "boxes", "--no-cache", "--engine", "ray", "--ray-address", address)
    assert run["applied"] == 6
    applied = {s["id"]: s["boundingBoxes"] for s in cli.json("samples", "list")}
    previewed = {sid: [{k: v for k, v in b.items() if k != "score"} for b in json.loads(change)["boundingBoxes"]]
                 for sid, step, change in _proposals(project, here["jobId"]) if step == 2}  # scores stay in jobs
    assert applied == previewed


def _slow_run(tmp_path: Path, n: int, delay: float, address: str,
              *extra: str, out: int = subprocess.DEVNULL) -> tuple[Path, Cli, subprocess.Popen[bytes]]:
    """A project of ``n`` images, an action of the fake labeler (``delay`` s a batch of 2, a
    secret token), and `actions run` of it on the cluster started in a process."""
    project = init_project(tmp_path / "proj")
    cli = _dataset(project, tmp_path, n)
    cli("secrets", "set", "FAKE_TOKEN", input="t0ken\n")
    cli("actions", "create", "slow", "--step", "fake-labeler", "-p", f"delay={delay}", "-p", "batch-size=2")
    proc = subprocess.Popen([sys.executable, "-m", "labelblocks", "--project", str(project), "actions", "run", "slow",
                             "--engine", "ray", "--ray-address", address, *extra], stdout=out, stderr=out)
    return project, cli, proc


def test_a_worker_killed_mid_step_and_the_job_completes(cluster: tuple[str, Path], tmp_path: Path) -> None:
    address, log = cluster
    log.write_text("")
    _, cli, proc = _slow_run(tmp_path, 24, 0.4, address, "--workers", "2", "--json", out=subprocess.PIPE)
    deadline = time.time() + 120
    pids: set[int] = set()
    while time.time() < deadline and not pids:
        time.sleep(0.2)
        pids = {json.loads(line)["pid"] for line in log.read_text().splitlines() if line.strip()}
    assert pids, "no batch started"
    os.kill(next(iter(pids)), signal.SIGKILL)  # an actor's process dies mid-step
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err.decode()[-3000:]
    summary = json.loads(out)  # only the summary: Ray's notes on the retried batch went to stderr
    assert summary["applied"] == 24 and summary["failed"] == 0
    labels = sorted(s["label"] for s in cli.json("samples", "list", "--limit", "100"))
    assert labels == sorted(f"L-cat.{i}" for i in range(24))
    assert "t0ken" not in out.decode() + err.decode()


def test_a_driver_killed_mid_step_resumes(cluster: tuple[str, Path], tmp_path: Path) -> None:
    address, _ = cluster
    project, cli, proc = _slow_run(tmp_path, 40, 0.3, address)
    kill_when(proc, project, "SELECT count(*) FROM proposals", 4, timeout=120)
    kept = project_sql(project).execute("SELECT count(*) FROM proposals").fetchone()[0]
    assert 4 <= kept < 40
    again = cli.json("actions", "run", "slow", "--engine", "ray", "--ray-address", address)
    assert again["resumed"] and again["applied"] == 40 and again["computed"] <= 40 - kept
    assert sorted(s["label"] for s in cli.json("samples", "list", "--limit", "100")) == \
        sorted(f"L-cat.{i}" for i in range(40))


def test_engine_options_are_checked(tmp_path: Path) -> None:
    project = init_project(tmp_path / "proj")
    cli = _dataset(project, tmp_path, 1)
    cli("actions", "create", "r", "--step", "relabel", "-p", "mapping=cat -> dog")
    r = cli("actions", "preview", "r", "--workers", "3", expect=2)
    assert "go with --engine ray" in r.stderr
    r = cli("actions", "preview", "r", "--engine", "ray", "--ray-address", "127.0.0.1:1", expect=1)
    assert "cannot connect to the Ray cluster" in r.stderr


def test_a_team_project_on_postgresql_and_s3_labels_on_ray_as_the_embedded_default(
        cluster: tuple[str, Path], tmp_path: Path, bucket: object, postgres_database: str) -> None:  # noqa: F811
    """The whole team setup: tables on PostgreSQL, media in an S3-compatible bucket, an OWL-ViT
    action on the Ray cluster (the actors read the media from the bucket), reviewed through
    `labelblocks serve`; the proposals are those of an embedded project (SQLite, local blobs)."""
    address, _ = cluster
    model = make_owl(tmp_path / "owl")
    team = init_project(tmp_path / "team", database=postgres_database, blobs="s3://media/team")
    embedded = init_project(tmp_path / "embedded")
    jobs = {}
    for project, engine in ((team, ["--engine", "ray", "--ray-address", address, "--workers", "2"]), (embedded, [])):
        cli = _dataset(project, tmp_path, 4)
        cli("actions", "create", "boxes", "--step", "owlvit", "-p", f"model={model}", "-p", "prompt=a cat (cat, 0.0)")
        jobs[project] = cli.json("actions", "preview", "boxes", "--limit", "4", *engine)["jobId"]
    assert _proposals(team, jobs[team]) == _proposals(embedded, jobs[embedded])
    with open_store(team) as store:
        _, key = create_key(store, "review")
    with BackgroundServer(team) as server:
        got = requests.get(f"{server.url}/api/1/raw-data/ai-actions-preview/{jobs[team]}/proposed-changes",
                           headers={"x-api-key": key}, timeout=30).json()
    assert got["success"] and len(got["proposedChanges"]) == 4
