"""External blocks: programs in any language and container images, run through the protocol's
HTTP API served on loopback, chained with in-process blocks, previewed, applied, resumed."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from labelblocks.builtin_blocks import Relabel
from labelblocks.external_blocks import dockerfile_command

from .conftest import Cli, fake_docker, kill_when, make_image, project_sql

BLOCKS = Path(__file__).parent / "external_blocks"
TOKEN = "py-block-TOKEN-secret-98765"


@pytest.fixture
def ds(cli: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Cli:
    """Six images (two of them narrow) and the plain-Python block registered."""
    for i in range(6):
        make_image(tmp_path / "ds" / f"img{i}.png", size=(20 if i in (1, 4) else 40, 20), seed=i)
    cli("upload", str(tmp_path / "ds"), "--no-label", "--metadata", "site=Paris")
    monkeypatch.setenv("PY_BLOCK_TOKEN", TOKEN)
    monkeypatch.setenv("PY_BLOCK_SEEN", "the runner must not pass this on")
    cli("blocks", "add", str(BLOCKS / "py_block"), "--name", "copier", "--command", f"{sys.executable} main.py")
    return cli


def _job_log(project: Path, job: int) -> str:
    return (project / ".labelblocks" / "logs" / f"job-{job}.log").read_text()


def _samples(cli: Cli) -> dict[int, dict]:
    return {s["id"]: s for s in cli.json("samples", "list", "--include-disabled")}


def test_blocks_add_list_info_remove(ds: Cli, tmp_path: Path) -> None:
    rows = {b["name"]: b for b in ds.json("blocks", "list")}
    assert rows["copier"]["plugin"] == "external" and rows["copier"]["title"].startswith("Box-label copier")
    assert "fake-boxer" in rows  # plugins stay listed
    info = ds.json("blocks", "info", "copier")
    assert "main.py" in info["runs"] and info["secrets"] == ["PY_BLOCK_TOKEN"]
    # the command comes from the Dockerfile's ENTRYPOINT when not given
    out = ds("blocks", "add", str(BLOCKS / "sh_block")).output
    assert "/bin/sh block.sh" in out
    assert ds.json("blocks", "info", "sh_block")["runs"].startswith("/bin/sh block.sh")
    # bad input: clear errors, nothing registered
    assert "is registered" in ds("blocks", "add", str(BLOCKS / "sh_block"), expect=1).output
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "has no parameters.json" in ds("blocks", "add", str(empty), expect=1).output
    (empty / "parameters.json").write_text(json.dumps({"version": 1, "info": {"name": "x"}, "parameters": []}))
    assert "--command" in ds("blocks", "add", str(empty), expect=1).output
    assert "comes from plugin" in ds("blocks", "add", str(empty), "--name", "fake-boxer", "--command", "true",
                                     expect=1).output
    assert "cannot find the block's program 'no-such-program-xyz'" in ds(
        "blocks", "add", str(empty), "--command", "no-such-program-xyz --x", expect=1).output
    (empty / "parameters.json").write_text("{not json")
    assert "not valid JSON" in ds("blocks", "add", str(empty), "--command", "true", expect=1).output
    assert "--parameters" in ds("blocks", "add", "--image", "x/y:1", expect=1).output
    ds("blocks", "remove", "sh_block")
    assert "sh_block" not in {b["name"] for b in ds.json("blocks", "list")}
    assert "no external block" in ds("blocks", "remove", "sh_block", expect=1).output


@pytest.mark.parametrize(("text", "expected"), [
    ('FROM x\nENTRYPOINT ["python3", "-u", "main.py"]\n', ["python3", "-u", "main.py"]),
    ("FROM x\nCMD python3 main.py --x 1\n", ["python3", "main.py", "--x", "1"]),
    ('FROM x\nCMD ["a"]\nENTRYPOINT ["node", \\\n "index.js"]\n', ["node", "index.js"]),
    ("FROM x\nRUN echo\n", None),
])
def test_dockerfile_command(tmp_path: Path, text: str, expected: list[str] | None) -> None:
    (tmp_path / "Dockerfile").write_text(text)
    assert dockerfile_command(tmp_path / "Dockerfile") == expected


def test_python_block_chained_preview_apply_and_run(ds: Cli, project: Path) -> None:
    ds("actions", "create", "chain", "--step", "fake-boxer", "-p", "label=car",
       "--step", "copier", "-p", "prefix=P-", "-p", "notes=first line\nsecond line",
       "--step", "fake-renamer", "-p", "from=car", "-p", "to=vehicle", "--set-metadata", "ai-labeled=true")
    before = _samples(ds)
    preview = ds.json("actions", "preview", "chain", "--limit", "3")
    job = preview["jobId"]
    assert preview["failed"] == 0
    by_step = {(p["sampleId"], p["step"]): p["proposedChanges"] for p in preview["proposals"]}
    for sid in (1, 2, 3):
        # step 2 (the external block) saw step 1's box and metadata through proposedActionsJobId
        assert by_step[(sid, 2)]["label"] == "P-car"
        assert by_step[(sid, 2)]["metadata"] == {"site": "Paris", "labeled_by": "fake-boxer", "boxes_seen": "1"}
        # step 3 (in-process) saw step 2's result
        assert [b["label"] for b in by_step[(sid, 3)]["boundingBoxes"]] == ["vehicle"]
    assert _samples(ds) == before  # a preview changes nothing
    log = _job_log(project, job)
    assert TOKEN not in log and "token is ***" in log
    assert "PY_BLOCK_SEEN set: False" in log  # only declared secrets and the contract's variables reach it
    assert "notes: ['first line', 'second line']" in log  # multiline values arrive encoded, decode back
    assert "ids: [1, 2, 3]" in log and "proposed no change" not in log
    # the same proposals over the API's listing endpoint, as the protocol shows them
    assert "P-car" in ds("proposals", "show", str(job)).output

    run = ds.json("actions", "run", "chain")
    assert run["applied"] == 6 and run["failed"] == 0
    assert run["cached"] == 9  # 3 previewed samples x 3 steps: nothing recomputed
    run_log = _job_log(project, run["jobId"])
    assert "ids: [4, 5, 6]" in run_log and TOKEN not in run_log
    after = _samples(ds)
    for s in after.values():
        assert s["label"] == "P-car" and [b["label"] for b in s["boundingBoxes"]] == ["vehicle"]
        assert s["metadata"] == {"site": "Paris", "labeled_by": "fake-boxer", "boxes_seen": "1", "ai-labeled": "true"}
    # applied again, the same as once: every step (the external one too) saw the samples without
    # the action's earlier boxes, label and metadata
    ds("actions", "run", "chain", "--all")
    assert _samples(ds) == after
    for f in (project / ".labelblocks").rglob("*"):
        if f.is_file():
            assert TOKEN.encode() not in f.read_bytes(), f


@pytest.mark.skipif(shutil.which("curl") is None, reason="the shell block needs curl")
def test_shell_block_direct_writes_are_staged_until_applied(ds: Cli, project: Path) -> None:
    ds("blocks", "add", str(BLOCKS / "sh_block"), "--name", "narrow")
    ds("actions", "create", "narrow", "--step", "narrow", "-p", "min-width=30", "-p", "tag=sh")
    preview = ds.json("actions", "preview", "narrow", "--limit", "6")
    assert preview["failed"] == 0
    changes = {p["sampleId"]: p["proposedChanges"] for p in preview["proposals"]}
    # the block wrote directly (disable, metadata); under the job's key those writes became proposals
    assert {sid for sid, c in changes.items() if c.get("isDisabled")} == {2, 5}
    assert all(c["metadata"] == {"site": "Paris", "seen_by": "sh"} for c in changes.values())
    assert not any(s["isDisabled"] for s in _samples(ds).values())
    assert "seen_by" not in json.dumps(ds.json("samples", "list"))
    ds("proposals", "apply", str(preview["jobId"]))
    after = _samples(ds)
    assert {sid for sid, s in after.items() if s["isDisabled"]} == {2, 5}
    assert all(s["metadata"]["seen_by"] == "sh" for s in after.values())


def test_image_block_runs_through_docker_run(ds: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bin_dir, log = fake_docker(tmp_path, {"registry.example/copier:1": {
        "command": [sys.executable, "main.py"], "cwd": str(BLOCKS / "py_block")}})
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    ds("blocks", "add", "--image", "registry.example/copier:1", "--parameters", str(BLOCKS / "py_block" / "parameters.json"),
       "--name", "copier-image")
    assert ds.json("blocks", "info", "copier-image")["runs"] == "container image registry.example/copier:1"
    ds("actions", "create", "img", "--step", "fake-boxer", "-p", "label=bus", "--step", "copier-image", "-p", "upper=true")
    run = ds.json("actions", "run", "img")
    assert run["applied"] == 6 and run["failed"] == 0
    assert {s["label"] for s in _samples(ds).values()} == {"BUS"}
    [call] = [json.loads(line) for line in log.read_text().splitlines()]
    argv = call["argv"]
    assert argv[:2] == ["run", "--rm"] and "registry.example/copier:1" in argv
    assert argv[argv.index("--network") + 1] == "host"
    env_names = [argv[i + 1] for i, a in enumerate(argv) if a == "-e"]
    assert {"EI_API_ENDPOINT", "EI_PROJECT_API_KEY", "EI_PROJECT_ID", "PY_BLOCK_TOKEN"} <= set(env_names)
    assert "PY_BLOCK_SEEN" not in env_names and "PY_BLOCK_SEEN" not in call["env"]
    assert TOKEN not in json.dumps(argv)  # secrets travel by name, never on the command line
    image_args = argv[argv.index("registry.example/copier:1") + 1 :]
    assert image_args[image_args.index("--upper") - 1] != "--upper" and "--propose-actions" in image_args
    ids_file = image_args[image_args.index("--data-ids-file") + 1]
    mount = argv[argv.index("-v") + 1]
    assert ids_file.startswith(mount.split(":")[0])  # the ids file is inside the mounted folder


def test_runner_image_serves_as_a_bundled_block(ds: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The runner's own image (entry point `labelblocks`) runs an installed block as a
    container block: `docker run ... labelblocks blocks run relabel <protocol argv>`."""
    bin_dir, log = fake_docker(tmp_path, {"labelblocks:test": {
        "command": [sys.executable, "-m", "labelblocks"], "cwd": str(tmp_path)}})
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    spec = tmp_path / "relabel.json"
    spec.write_text(json.dumps(Relabel.spec().model_dump(by_alias=True, exclude_none=True)))
    ds("blocks", "add", "--image", "labelblocks:test", "--command", "blocks run relabel", "--parameters", str(spec),
       "--name", "relabel-docker")
    assert ds.json("blocks", "info", "relabel-docker")["runs"] == "container image labelblocks:test with blocks run relabel"
    ds("actions", "create", "rd", "--step", "fake-boxer", "-p", "label=thing", "--step", "relabel-docker",
       "-p", "mapping=thing -> gadget")
    run = ds.json("actions", "run", "rd")
    assert run["applied"] == 6 and run["failed"] == 0
    assert all([b["label"] for b in s["boundingBoxes"]] == ["gadget"] for s in _samples(ds).values())
    [call] = [json.loads(line) for line in log.read_text().splitlines()]
    argv = call["argv"]
    assert argv[argv.index("labelblocks:test") + 1 : argv.index("labelblocks:test") + 4] == ["blocks", "run", "relabel"]


def test_missing_docker_is_a_clear_error(ds: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "nothing-here"))
    ds("blocks", "add", "--image", "x/y:1", "--parameters", str(BLOCKS / "py_block" / "parameters.json"))
    ds("actions", "create", "a", "--step", "y")
    out = ds("actions", "run", "a", expect=1).output
    assert "cannot start 'docker'" in out and "Docker installed" in out


def test_a_block_that_proposes_nothing(ds: Cli, tmp_path: Path, project: Path) -> None:
    folder = tmp_path / "idle"
    folder.mkdir()
    (folder / "parameters.json").write_text(json.dumps({"version": 1, "info": {"name": "Idle"}, "parameters": []}))
    ds("blocks", "add", str(folder), "--command", "true")
    ds("actions", "create", "idle", "--step", "idle")
    before = _samples(ds)
    out = ds.json("actions", "run", "idle")
    assert out["applied"] == 6 and out["failed"] == 0
    assert _samples(ds) == {sid: {**s, "updated": _samples(ds)[sid]["updated"]} for sid, s in before.items()}
    assert "the block proposed no change for 6 of its 6 samples" in _job_log(project, out["jobId"])


def test_failing_block_fails_its_unfinished_samples_with_the_log_tail(ds: Cli, project: Path) -> None:
    ds("actions", "create", "fail", "--step", "copier", "-p", "exit_on=4")
    r = ds("actions", "run", "fail", "--json", expect=1)
    out = json.loads(r.stdout)
    assert out["failed"] == 3 and out["applied"] == 3
    job = ds.json("jobs", "show", str(out["jobId"]))
    failures = {f["sampleId"]: f["error"] for f in job["failures"]}
    assert set(failures) == {4, 5, 6}
    assert all("exited with code 3" in e and "giving up at sample 4" in e for e in failures.values())
    assert all(TOKEN not in e for e in failures.values())
    log = ds("jobs", "log", str(out["jobId"]), "--tail", "2").output
    assert "giving up at sample 4" in log and len(log.splitlines()) == 2
    assert "jobs log" in ds("jobs", "show", str(out["jobId"])).output
    labels = {sid: s.get("label") for sid, s in _samples(ds).items()}
    assert labels[1] == "none" and labels[4] is None


def test_time_limit_stops_the_block(ds: Cli) -> None:
    ds("blocks", "add", str(BLOCKS / "py_block"), "--name", "slow", "--command", f"{sys.executable} main.py",
       "--timeout", "4")
    ds("actions", "create", "slow", "--step", "slow", "-p", "delay=60")
    t0 = time.monotonic()
    out = json.loads(ds("actions", "run", "slow", "--json", expect=1).stdout)
    assert time.monotonic() - t0 < 30
    # the first sample (done before its 60 s pause, unless this machine is very slow) is kept
    assert out["failed"] >= 5 and out["applied"] == 6 - out["failed"]
    failures = ds.json("jobs", "show", str(out["jobId"]))["failures"]
    assert len(failures) == out["failed"] and all("time limit of 4 s" in f["error"] for f in failures)


def test_external_step_resumes_after_sigkill(ds: Cli, project: Path, tmp_path: Path) -> None:
    ds("actions", "create", "slow", "--step", "fake-boxer", "--step", "copier", "-p", "delay=0.5")
    env = {**os.environ}
    cmd = [sys.executable, "-m", "labelblocks", "--project", str(project), "actions", "run", "slow", "--json"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    kill_when(proc, project, "SELECT count(*) FROM proposals WHERE step = 2", 2)
    con = project_sql(project)
    finished = {i for (i,) in con.execute("SELECT sample_id FROM proposals WHERE step = 2")}
    assert 2 <= len(finished) < 6
    assert con.execute("SELECT count(*) FROM samples WHERE label IS NOT NULL").fetchone()[0] == 0
    work = project / ".labelblocks" / "tmp"
    left = list(work.iterdir())  # the killed process could not remove its step's folder
    assert [p.name.endswith(f"-pid{proc.pid}") for p in left] == [True]
    time.sleep(1)  # the orphaned block finds the API gone and exits
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["resumed"] and out["applied"] == 6
    log = _job_log(project, out["jobId"])
    runs = [json.loads(line.split("ids: ", 1)[1]) for line in log.splitlines() if "ids: " in line]
    assert len(runs) == 2 and set(runs[1]).isdisjoint(finished) and set(runs[1]) | finished == set(range(1, 7))
    assert all(s["label"] == "thing" for s in _samples(ds).values())
    assert list(work.iterdir()) == []  # the dead process's folder is swept, the new one removed


def test_installed_block_runs_as_a_protocol_block(ds: Cli, tmp_path: Path, project: Path) -> None:
    """`labelblocks blocks run` makes any installed block a protocol block: registered as an
    external block, it runs in its own process against the loopback API."""
    folder = tmp_path / "relabel-block"
    folder.mkdir()
    (folder / "parameters.json").write_text(json.dumps(Relabel.spec().model_dump(by_alias=True, exclude_none=True)))
    ds("blocks", "add", str(folder), "--name", "relabel-ext",
       "--command", f"{sys.executable} -m labelblocks blocks run relabel")
    ds("actions", "create", "rb", "--step", "fake-boxer", "-p", "label=thing",
       "--step", "relabel-ext", "-p", "mapping=thing -> widget")
    preview = ds.json("actions", "preview", "rb", "--limit", "2")
    assert preview["failed"] == 0, preview
    step2 = {p["sampleId"]: p["proposedChanges"] for p in preview["proposals"] if p["step"] == 2}
    assert set(step2) == {1, 2}
    assert all([b["label"] for b in c["boundingBoxes"]] == ["widget"] for c in step2.values())
    run = ds.json("actions", "run", "rb")
    assert run["applied"] == 6
    assert all([b["label"] for b in s["boundingBoxes"]] == ["widget"] for s in _samples(ds).values())


def test_a_block_echoing_its_secret_stores_it_nowhere(ds: Cli, project: Path) -> None:
    """An external block that puts its secret into its results, whole, base64- or URL-encoded
    or a piece of it: the value reaches no proposal, no output, no sample and no file."""
    import base64
    import urllib.parse

    forms = [TOKEN, base64.b64encode(TOKEN.encode()).decode(), urllib.parse.quote(TOKEN, safe=""), TOKEN[2:16]]
    ds("actions", "create", "leaky", "--step", "copier", "-p", "leak=true")
    preview = ds("actions", "preview", "leaky", "--limit", "2", "--json")
    job = json.loads(preview.output)["jobId"]
    outputs = [preview.output, ds("proposals", "show", str(job), "--json").output,
               ds("proposals", "show", str(job)).output]
    ds("proposals", "apply", str(job))
    outputs.append(ds("samples", "list", "--json").output)
    for text in outputs:
        for form in forms:
            assert form not in text
    [s1] = [s for s in json.loads(outputs[-1]) if s["id"] == 1]
    assert s1["label"] == "L-***" and s1["metadata"]["leak"] == "***" and s1["metadata"]["part"] == "***"
    for f in (project / ".labelblocks").rglob("*"):
        if f.is_file():
            data = f.read_bytes()
            for form in forms:
                assert form.encode() not in data, f
