"""What a newcomer hits first (issue: a newcomer's first hour), through the real CLI: the demo,
mixed projects, runs that change nothing the second time, output that is never silently cut,
uploads that do not duplicate, clear messages."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import Cli, default_sigint, make_audio, make_image, project_sql


def run(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "labelblocks", *args], cwd=cwd, capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=300)


# --- item 1: the demo ------------------------------------------------------------------------------


def test_demo_runs_the_main_job_offline(tmp_path: Path) -> None:
    r = run("demo", cwd=tmp_path, env={"HF_HUB_CACHE": str(tmp_path / "empty-cache"), "HF_HUB_OFFLINE": "1"})
    assert r.returncode == 0, r.stderr
    out = r.stdout
    for step in ("1. Created a project", "2. Uploaded 30 samples", "3. Created the action `clean`", "4. Previewed",
                 "5. Applied the proposals of job 1 to 30 samples"):
        assert step in out
    assert "label: square -> box" in out and "disabled" in out and "OWL-ViT is not added" in out
    assert "passed over 6 audio samples" in out
    project = tmp_path / "labelblocks-demo"
    listed = json.loads(run("samples", "list", "--include-disabled", "--json", cwd=project).stdout)
    assert len(listed) == 30 and sum(s["isDisabled"] for s in listed) == 12
    assert {s["label"] for s in listed} == {"box", "ring", "tone", "noise"}
    assert all(s["metadata"]["ai-labeled"] == "true" for s in listed)
    # again in the same folder: the earlier demo is replaced, not added to
    again = run("demo", "--json", cwd=tmp_path, env={"HF_HUB_CACHE": str(tmp_path / "empty-cache")})
    assert again.returncode == 0 and json.loads(again.stdout)["applied"] == 30
    assert len(json.loads(run("samples", "list", "--json", "--include-disabled", cwd=project).stdout)) == 30
    # a folder that is not a demo is never touched
    other = tmp_path / "mine"
    other.mkdir()
    (other / "thesis.txt").write_text("keep me")
    refused = run("demo", str(other), cwd=tmp_path)
    assert refused.returncode == 1 and "not empty" in refused.stderr and (other / "thesis.txt").exists()


def test_demo_adds_owlvit_when_its_weights_are_cached(tmp_path: Path) -> None:
    from tests.blocks.tiny_models import make_owl
    from tests.test_readme import hub_cache

    hub_cache(tmp_path / "hub", "google/owlvit-base-patch32", make_owl)
    r = run("demo", "--json", str(tmp_path / "d"), env={"HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1"})
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["owlvit"] == "google/owlvit-base-patch32" and out["steps"][-1] == "owlvit" and out["failed"] == 0


# --- item 5: mixed projects -------------------------------------------------------------------------


def test_image_blocks_pass_over_audio_samples(cli: Cli, tmp_path: Path) -> None:
    for i in range(3):
        make_image(tmp_path / "m" / f"cat.{i}.png", seed=i)
    make_audio(tmp_path / "m" / "dog.wav", seconds=0.3, rate=8000)
    cli("upload", str(tmp_path / "m"))
    cli("actions", "create", "dedup", "--step", "near-duplicates", "--set-metadata", "seen=yes")
    out = cli("actions", "run", "dedup").stdout
    assert "failed" in out and "0 failed" in out and "Skipped 1 sample that no step operates on" in out
    assert "cannot identify image" not in out
    summary = cli.json("actions", "run", "dedup", "--all")
    assert summary["failed"] == 0 and summary["skipped"] == 1 and summary["applied"] == 3
    audio = cli.json("samples", "show", "4")
    assert "seen" not in audio["metadata"] and "duplicate_group" not in audio["metadata"]
    job = cli.json("jobs", "show", str(summary["jobId"]))
    assert job["counts"] == {"applied": 3, "skipped": 1}
    # a chain with a step for both kinds: the audio sample passes step 1 and reaches step 2
    cli("actions", "create", "both", "--step", "near-duplicates", "--step", "relabel", "-p", "mapping=dog -> barking")
    both = cli.json("actions", "run", "both")
    assert both["failed"] == 0 and both["skipped"] == 0 and any("passed over 1 audio" in n for n in both["notes"])
    assert cli.json("samples", "show", "4")["label"] == "barking"



# --- item 4: running an action twice changes nothing the second time -----------------------------


def test_running_an_action_again_labels_only_new_or_changed_samples(cli: Cli, tmp_path: Path) -> None:
    for i in range(3):
        make_image(tmp_path / "a" / f"cat.{i}.png", seed=i)
    cli("upload", str(tmp_path / "a"))
    cli("actions", "create", "boxes", "--step", "fake-boxer", "--step", "fake-renamer", "--set-metadata", "ai=yes")
    first = cli.json("actions", "run", "boxes")
    assert first["applied"] == 3 and first["unchanged"] == 0
    boxes = {s["id"]: len(s["boundingBoxes"]) for s in cli.json("samples", "list")}
    assert boxes == {1: 1, 2: 1, 3: 1}
    # new images, and one earlier image edited by hand
    for i in range(3, 5):
        make_image(tmp_path / "b" / f"cat.{i}.png", seed=i)
    cli("upload", str(tmp_path / "b"))
    cli("metadata", "set", "--ids", "2", "site=Nice")
    second = cli.json("actions", "run", "boxes")
    assert second["unchanged"] == 2 and second["samples"] == 3 and second["applied"] == 3
    boxes = {s["id"]: len(s["boundingBoxes"]) for s in cli.json("samples", "list")}
    # the edited sample was labeled again: its box replaced, not a second one beside it
    assert boxes == {1: 1, 2: 1, 3: 1, 4: 1, 5: 1}
    out = cli("actions", "run", "boxes").stdout
    assert "Nothing to do" in out and "all 5 of its samples" in out and "--all" in out
    assert {s["id"]: len(s["boundingBoxes"]) for s in cli.json("samples", "list")} == boxes
    forced = cli.json("actions", "run", "boxes", "--all")
    assert forced["applied"] == 5 and forced["unchanged"] == 0
    assert {s["id"]: len(s["boundingBoxes"]) for s in cli.json("samples", "list")} == boxes  # once = twice
    # another action (or the same name with other parameters) is not "already applied": its box is added
    cli("actions", "create", "boxes2", "--step", "fake-boxer", "-p", "label=other")
    assert cli.json("actions", "run", "boxes2")["applied"] == 5
    assert all(sorted(b["label"] for b in s["boundingBoxes"]) == ["other", "renamed"]
               for s in cli.json("samples", "list"))


# --- items 7 and 10: never silent -----------------------------------------------------------------


def test_listings_are_complete_or_say_how_to_see_the_rest(cli: Cli, tmp_path: Path) -> None:
    from labelblocks.project import open_store
    from labelblocks.store import NewSample

    with open_store(cli.project) as store:  # 60 samples sharing one blob: fast to make
        img = make_image(tmp_path / "one.png")
        import hashlib

        h = hashlib.sha256(img.read_bytes()).hexdigest()
        store.blobs.put(h, img.read_bytes())
        store.add_samples([NewSample(filename=f"s{i}.png", category="training", content_hash=h, media_type="image/png",
                                     ext=".png", width=64, height=48, metadata={"note": "two\nlines"} if i == 0 else {})
                           for i in range(60)])
    assert len(cli.json("samples", "list")) == 60
    lines = cli("samples", "list", "--nl").stdout.splitlines()
    assert len(lines) == 60 and all(json.loads(line)["filename"].startswith("s") for line in lines)
    assert len(cli.json("samples", "list", "--limit", "7", "--offset", "55")) == 5
    table = cli("samples", "list")
    assert len(table.stdout.splitlines()) == 51  # the header and 50 rows
    assert "samples 1 to 50 of 60" in table.stderr and "--offset 50" in table.stderr and "--json" in table.stderr
    assert "note=two\\nlines" in table.stdout
    r = cli("samples", "list", "--limit", "0", expect=2)
    assert "expected 1 or more" in r.output
    assert "No samples from offset 100: 60 match." in cli("samples", "list", "--offset", "100").stdout


def test_messages_say_what_is_wrong(cli: Cli, tmp_path: Path) -> None:
    make_image(tmp_path / "x" / "cat.0.png")
    cli("upload", str(tmp_path / "x"))
    r = cli("metadata", "set", "--ids", "1", "site", expect=2)
    assert "expected KEY=VALUE, got 'site': the '=' is missing" in r.output
    r = cli("metadata", "set", "1", "reviewed", expect=1)
    assert "the '=' is missing" in r.output
    # a block that saved actions use is removed only with --force, which names them
    cli("blocks", "add", str(Path(__file__).resolve().parent.parent / "examples" / "blocks" / "box-label"),
        "--name", "box-label", "--command", "python3 main.py")
    cli("actions", "create", "uses-it", "--step", "box-label")
    r = cli("blocks", "remove", "box-label", expect=1)
    assert "used by the action uses-it" in r.output and "--force" in r.output
    assert "box-label" in cli("blocks", "list").stdout
    cli("blocks", "remove", "box-label", "--force")
    assert "box-label" not in cli("blocks", "list").stdout


def test_each_steps_provenance_is_kept(cli: Cli, tmp_path: Path) -> None:
    from tests.blocks.tiny_models import make_owl

    model = make_owl(tmp_path / "owl")
    for i in range(2):
        make_image(tmp_path / "x" / f"cat.{i}.png", size=(96, 96), seed=i)
    cli("upload", str(tmp_path / "x"))
    cli("actions", "create", "two", "--step", "owlvit", "-p", "prompt=a cat (cat, 0.0)", "-p", f"model={model}",
        "--step", "owlvit", "-p", "prompt=a dog (dog, 0.0)", "-p", f"model={model}")
    cli("actions", "run", "two")
    md = cli.json("samples", "show", "1")["metadata"]
    assert md["prompt"] == "a cat (cat, 0.0) | a dog (dog, 0.0)"  # the first step's is not overwritten
    assert md["labeled_by"] == str(model)  # the same model: once


# --- item 11: multiline parameters in the protocol's encoding --------------------------------------


def test_multiline_parameters_take_the_protocols_encoding(cli: Cli, tmp_path: Path) -> None:
    for name in ("square.0.png", "circle.0.png"):
        make_image(tmp_path / "x" / name)
    cli("upload", str(tmp_path / "x"))
    # a backslash and n (what a protocol block's parameters.json or argv holds) is a newline
    cli("actions", "create", "rename", "--step", "relabel", "-p", r"mapping=square -> box\ncircle -> ring")
    preview = cli.json("actions", "preview", "rename")
    assert {p["proposedChanges"].get("label") for p in preview["proposals"]} == {"box", "ring"}
    info = cli("blocks", "info", "relabel").stdout
    assert "one item per line" in info and r"\\n" in info


# --- item 9: uploads --------------------------------------------------------------------------------


def test_repeating_an_upload_adds_nothing_and_walks_say_what_they_skip(cli: Cli, tmp_path: Path) -> None:
    data = tmp_path / "d"
    for i in range(3):
        make_image(data / f"cat.{i}.png", seed=i)
    info = data / "info.labels"
    entries = [{"path": f"cat.{i}.png", "label": {"type": "label", "label": "cat"}} for i in range(3)]
    info.write_text(json.dumps({"version": 1, "files": [*entries, {"path": "missing.png"}]}))
    first = cli.json("upload", "--info-file", str(info), expect=1)
    assert (first["added"], first["rejected"]) == (3, 1)
    info.write_text(json.dumps({"version": 1, "files": entries}))  # the bad entry fixed: upload again, twice
    for _ in range(2):
        again = cli.json("upload", "--info-file", str(info))
        assert (again["added"], again["duplicates"]) == (0, 3)
    assert "skipped 3 duplicates" in cli("upload", "--info-file", str(info)).stdout
    assert len(cli.json("samples", "list")) == 3
    # a symbolic link to a folder inside a walked folder is reported, not silently passed over
    (tmp_path / "elsewhere").mkdir()
    make_image(tmp_path / "elsewhere" / "dog.0.png", seed=7)
    (data / "linked").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    out = cli.json("upload", str(data), expect=1)
    linked = [f for f in out["files"] if f["path"].endswith("linked")]
    assert linked and "symbolic link to a folder" in linked[0]["error"]


def test_ctrl_c_during_an_upload_exits_130_and_leaves_no_stray_file(cli: Cli, tmp_path: Path) -> None:
    import signal
    import sqlite3
    import time

    for i in range(600):
        make_image(tmp_path / "many" / f"x{i:04d}.png", size=(48, 48), seed=i)
    proc = subprocess.Popen([sys.executable, "-m", "labelblocks", "--project", str(cli.project), "upload",
                             str(tmp_path / "many")], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=default_sigint)
    db = project_sql(cli.project)
    deadline = time.time() + 60
    while time.time() < deadline:
        time.sleep(0.02)
        try:
            if db.execute("SELECT count(*) FROM samples").fetchone()[0] >= 1:
                break
        except sqlite3.OperationalError:
            pass
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    n = db.execute("SELECT count(*) FROM samples").fetchone()[0]
    print(f"interrupted after {n} of 600 samples, exit {proc.returncode}")
    if n < 600:  # interrupted before the end (else the upload won the race: nothing to check)
        assert proc.returncode == 130 and "Interrupted" in err and "Traceback" not in err
    stray = cli.json("gc", "--dry-run", "--min-age", "0")
    assert stray["wouldRemove"] == 0, stray["files"][:5]
    out = cli.json("upload", str(tmp_path / "many"))  # again: only what is missing
    assert out["added"] == 600 - n and out["duplicates"] == n


# --- item 3: a missing model offline fails fast ------------------------------------------------------


@pytest.mark.parametrize("offline", [{"HF_HUB_OFFLINE": "1"}, {"HF_ENDPOINT": "http://127.0.0.1:9"}],
                         ids=["HF_HUB_OFFLINE", "hub unreachable"])
def test_a_missing_model_offline_fails_within_seconds(cli: Cli, tmp_path: Path, offline: dict[str, str]) -> None:
    import time

    make_image(tmp_path / "x" / "cat.0.png")
    cli("upload", str(tmp_path / "x"))
    cli("actions", "create", "boxes", "--step", "owlvit", "-p", "prompt=a cat")
    t = time.monotonic()
    r = run("--project", str(cli.project), "actions", "preview", "boxes",
            env={"HF_HUB_CACHE": str(tmp_path / "empty-cache"), **offline})
    took = time.monotonic() - t
    assert r.returncode == 1 and "'google/owlvit-base-patch32' was not found" in r.stderr
    assert "-p model=/path/to/model" in r.stderr and "Traceback" not in r.stderr
    assert took < 5, f"took {took:.1f} s"


# --- item 8: samples that change while a run labels them -----------------------------------------


def test_a_run_labels_again_what_changed_meanwhile_and_names_what_it_leaves_out(cli: Cli, tmp_path: Path) -> None:
    for i in range(4):
        make_image(tmp_path / "x" / f"cat.{i}.png", seed=i)
    cli("upload", str(tmp_path / "x"))
    db = str(cli.project / ".labelblocks" / "project.db")
    # another writer changes every sample once, while the run computes them
    cli("actions", "create", "once", "--step", "fake-meddler", "-p", f"db={db}", "-p",
        f"counter={tmp_path / 'once'}", "-p", "rounds=1")
    out = cli.json("actions", "run", "once")
    assert out["applied"] == 4 and out["rounds"] == 1 and out["leftOut"] == [] and out["failed"] == 0
    samples = cli.json("samples", "list")
    assert all(s["label"] == "meddled" and s["metadata"]["touched"] == "1" for s in samples)  # nothing overwritten
    # a writer that never stops: bounded rounds, then the samples are named and the exit code says so
    cli("actions", "create", "always", "--step", "fake-meddler", "-p", f"db={db}", "-p",
        f"counter={tmp_path / 'always'}", "-p", "rounds=99")
    r = cli("actions", "run", "always", expect=1)
    assert "Left out 4 samples that kept changing" in r.stderr and "1, 2, 3, 4" in r.stderr
    out = json.loads(cli("actions", "run", "always", "--json", expect=1).stdout)
    assert out["leftOut"] == [1, 2, 3, 4] and out["rounds"] == 3 and out["applied"] == 0


# --- item 6: reuse keyed by what a block reads --------------------------------------------------------


def test_results_are_reused_by_what_the_block_reads(cli: Cli, tmp_path: Path) -> None:
    from tests.blocks.tiny_models import make_owl

    model = make_owl(tmp_path / "owl")
    for i in range(6):
        make_image(tmp_path / "x" / f"cat.{i}.png", size=(96, 96), seed=i)
    cli("upload", str(tmp_path / "x"))
    # step 1 sees the whole selection (its results are never reused), yet the later steps are
    cli("actions", "create", "chain", "--step", "near-duplicates", "--step", "owlvit", "-p", "prompt=a cat (cat, 0.0)",
        "-p", f"model={model}", "--step", "relabel", "-p", "mapping=cat -> kitty")
    preview = cli.json("actions", "preview", "chain", "--limit", "4")
    assert preview["cached"] == 0 and preview["failed"] == 0
    run = cli.json("actions", "run", "chain")
    # near-duplicates ran again on all 6; owlvit and relabel were reused for the 4 previewed images
    assert run["applied"] == 6 and run["cached"] == 8 and run["computed"] == 6 + 2 + 2
    # a change the block does not read (a metadata key for relabel, which reads labels and boxes) keeps
    # relabel's results; owlvit reads metadata, so it runs again
    cli("actions", "create", "rename", "--step", "relabel", "-p", "mapping=kitty -> cat")
    cli.json("actions", "preview", "rename", "--limit", "6")
    cli("metadata", "set", "--ids", "1-6", "reviewed=yes")
    again = cli.json("actions", "preview", "rename", "--limit", "6")
    assert again["cached"] == 6 and again["computed"] == 0
    # what it reads changed (a label): that sample is computed again, the others reused
    cli("samples", "label", "1", "--label", "kitty-2")
    third = cli.json("actions", "preview", "rename", "--limit", "6")
    assert third["cached"] == 5 and third["computed"] == 1


def test_time_left_comes_from_the_rate_once_items_finish() -> None:
    """An upload whose workers take 1.5 s to start, then finish 1,000 files a second: the
    time left is that of the remaining files at that rate, not 1.5 s per file."""
    from labelblocks.cli._util import eta_seconds

    total = 600
    assert eta_seconds(None, 1.5, 0, total) is None  # nothing done yet: no rate, nothing shown
    first = (1.5, 1)  # the first file finished after the start-up
    assert eta_seconds(first, 1.5, 1, total) is None
    left = eta_seconds(first, 1.6, 101, total)  # 100 more in 0.1 s
    assert left is not None and abs(left - 0.499) < 0.01
    assert eta_seconds(first, 2.1, 600, total) == 0.0


def _read_only_mount_works() -> bool:
    import shutil

    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "-rm", "sh", "-c", "mount --bind /tmp /tmp && mount -o remount,bind,ro /tmp"],
                           capture_output=True)
    return probe.returncode == 0


@pytest.mark.skipif(not _read_only_mount_works(), reason="needs unshare to mount a folder read-only")
def test_a_read_only_project_reads_and_refuses_writes_in_one_line(cli: Cli, tmp_path: Path) -> None:
    make_image(tmp_path / "x" / "cat.0.png")
    cli("upload", str(tmp_path / "x"))
    cli("actions", "create", "boxes", "--step", "fake-boxer")
    project = cli.project
    lb = f"{sys.executable} -m labelblocks --project {project}"
    script = "\n".join([
        f"mount --bind {project} {project} && mount -o remount,bind,ro {project}",  # a read-only mount, in here only
        f"{lb} samples list --json; echo rc=$?",
        f"{lb} metadata set --ids 1 a=b; echo rc=$?",
        f"{lb} upload {tmp_path / 'x' / 'cat.0.png'} --allow-duplicates; echo rc=$?",
        f"{lb} actions run boxes; echo rc=$?",
        f"{lb} export {tmp_path / 'out'}; echo rc=$?",
    ])
    r = subprocess.run(["unshare", "-rm", "sh", "-c", script], capture_output=True, text=True, timeout=300)
    codes = [line for line in r.stdout.splitlines() if line.startswith("rc=")]
    assert codes == ["rc=0", "rc=1", "rc=1", "rc=1", "rc=0"], r.stdout + r.stderr
    errors = [line for line in r.stderr.splitlines() if line.strip()]
    assert errors == ["Error: the project is read-only: this command writes to it; read-only commands still work"] * 3
    assert json.loads(r.stdout.split("rc=0")[0])[0]["filename"] == "cat.0.png"
    assert (tmp_path / "out" / "info.labels").exists()
