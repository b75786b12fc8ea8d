from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests import fake_blocks

from .conftest import Cli, both_dialects, default_sigint, kill_when, make_image, project_sql

SECRET = "sk-planted-SECRET-4242-zz"


@pytest.fixture
def ds(cli: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Cli:
    for i in range(6):
        make_image(tmp_path / "ds" / f"img{i}.png", size=(40, 20), seed=i)
    cli("upload", str(tmp_path / "ds"), "--no-label", "--metadata", "site=Paris")
    cli("metadata", "set", "--ids", "5,6", "site=Lyon")
    monkeypatch.setenv("FAKE_TOKEN", "token-value-123")
    fake_blocks.CALLS.clear()
    return cli


def test_actions_create_list_show_delete(ds: Cli, tmp_path: Path) -> None:
    ds("actions", "create", "chain", "--step", "fake-boxer", "-p", "label=dog", "--step", "fake-renamer",
       "-p", "from=dog", "-p", "to=puppy", "--where", "site=Paris", "--set-metadata", "ai-labeled=true")
    [a] = ds.json("actions", "list")
    assert a["steps"] == [{"block": "fake-boxer", "parameters": {"label": "dog"}},
                          {"block": "fake-renamer", "parameters": {"from": "dog", "to": "puppy"}}]
    assert a["setMetadata"] == [{"key": "ai-labeled", "value": "true"}]
    assert "step 2: fake-renamer" in ds("actions", "show", "chain").stdout
    r = ds("actions", "create", "chain", "--step", "fake-boxer", expect=1)
    assert "exists" in r.output
    ds("actions", "delete", "chain")
    assert ds.json("actions", "list") == []
    (tmp_path / "a.yaml").write_text("name: fromfile\nsteps:\n  - block: fake-labeler\n    parameters: {prefix: 'X-'}\n"
                                     "dataCategory: dataWithMetadata\ndataMetadataKey: site\ndataMetadataValue: Lyon\n")
    ds("actions", "create", "--file", str(tmp_path / "a.yaml"))
    assert ds.json("actions", "show", "fromfile")["dataMetadataValue"] == "Lyon"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["bad", "--step", "nope"], "no block named 'nope'"),
        (["bad", "--step", "fake-boxer", "-p", "colour=red"], "unknown parameter 'colour'"),
        (["bad", "--step", "fake-labeler", "-p", "batch-size=many"], "expected an integer, got 'many'"),
        (["bad", "-p", "label=x"], "give --step BLOCK before"),
        (["bad"], "at least one --step"),
        (["bad", "--step", "fake-boxer", "-p", "label"], "expected PARAM=VALUE"),
        (["bad", "--step", "fake-boxer", "--data", "dataWithMetadata"], "needs a metadata key"),
        (["bad name", "--step", "fake-boxer"], "name"),
    ],
)
def test_actions_validated_when_saved(ds: Cli, args: list[str], message: str) -> None:
    r = ds("actions", "create", *args, expect=None)
    assert r.exit_code in (1, 2) and message in r.output, r.output
    assert ds.json("actions", "list") == []


def test_three_step_chain_preview_sees_earlier_proposals(ds: Cli) -> None:
    ds("actions", "create", "chain3", "--step", "fake-boxer", "-p", "label=dog", "--step", "fake-renamer",
       "-p", "from=dog", "-p", "to=puppy", "--step", "fake-labeler", "-p", "prefix=P-", "--where", "site=Paris")
    out = ds.json("actions", "preview", "chain3", "--limit", "3")
    job = out["jobId"]
    assert out["samples"] == 3 and out["failed"] == 0
    steps = [c["block"] for c in fake_blocks.CALLS]
    assert steps == ["fake-boxer", "fake-renamer", "fake-labeler"]
    renamer = fake_blocks.CALLS[1]
    # step 2 saw step 1's proposed boxes, step 3 saw step 2's renamed ones
    assert all(v == ["dog"] for v in renamer["boxes"].values())
    assert all(v == ["puppy"] for v in fake_blocks.CALLS[2]["boxes"].values())
    assert all(c["preview"] for c in fake_blocks.CALLS)
    # nothing changed in the dataset yet
    assert all(not s["boundingBoxes"] and "label" not in s for s in ds.json("samples", "list"))
    props = ds.json("proposals", "show", str(job))["proposedChanges"]
    assert {(p["sampleId"], p["step"]) for p in props} == {(i, k) for i in (1, 2, 3) for k in (1, 2, 3)}
    step1 = next(p for p in props if p["step"] == 1)
    assert step1["proposedChanges"]["boundingBoxes"][0]["score"] == 0.75  # scores kept in the job's record
    text = ds("proposals", "show", str(job)).stdout
    assert "boxes added: 1 (puppy)" in text and "label: - -> P-img0" in text
    ds("proposals", "apply", str(job), "--ids", "2")
    s2 = ds.json("samples", "show", "2")
    assert s2["label"] == "P-img1" and s2["boundingBoxes"] == [{"label": "puppy", "x": 0, "y": 0, "width": 20, "height": 10}]
    assert s2["metadata"] == {"site": "Paris", "labeled_by": "fake-boxer"}
    assert "label" not in ds.json("samples", "show", "1")
    ds("proposals", "apply", str(job))
    assert ds.json("samples", "show", "1")["label"] == "P-img0"
    jobs = ds.json("jobs", "show", str(job))
    assert jobs["counts"] == {"applied": 3} and jobs["usage"] == {"requests": 3}


def test_discard(ds: Cli) -> None:
    ds("actions", "create", "a", "--step", "fake-labeler")
    job = ds.json("actions", "preview", "a", "--ids", "1,2")["jobId"]
    ds("proposals", "discard", str(job))
    assert ds.json("proposals", "show", str(job))["proposedChanges"] == []
    assert ds("proposals", "show", str(job)).stdout == f"Job {job} (preview of action a): its proposals were discarded.\n"
    r = ds("proposals", "apply", str(job), expect=1)
    assert "discarded" in r.output


def test_apply_leaves_out_samples_changed_since_the_preview(ds: Cli) -> None:
    """A preview's proposals hold whole fields as the block saw them (all of a sample's
    metadata): applied after the sample changed, they would undo that change. Such samples
    are left out, and said so; a block that never looked at its samples still applies."""
    ds("actions", "create", "box", "--step", "fake-boxer")
    ds("actions", "create", "const", "--step", "fake-constant")
    job = ds.json("actions", "preview", "box", "--ids", "1-3")["jobId"]
    const = ds.json("actions", "preview", "const", "--ids", "1-3")["jobId"]
    ds("metadata", "set", "--ids", "2", "reviewed=yes")
    shown = [line for line in ds("proposals", "show", str(job)).stdout.splitlines() if line.startswith("sample")]
    assert shown[1] == ("sample 2 img1.png: changed since the job ran; applying leaves it as it is "
                        "(preview again for what it needs now)")
    assert shown[0] == "sample 1 img0.png: boxes added: 1 (thing)" and shown[2].startswith("sample 3 img2.png: boxes")
    # sample 2, changed, lies between the two applied: it is not left out when not asked for
    assert ds("proposals", "apply", str(job), "--ids", "1,3").stdout.strip() == f"Applied job {job}'s proposals to 2 samples."
    r = ds("proposals", "apply", str(job))
    assert r.stdout.strip() == (f"Applied job {job}'s proposals to 0 samples. Left out 1 that changed or were deleted "
                                f"since the job ran (`labelblocks proposals show {job}` lists them; preview again "
                                f"for what they need now).")
    s = {x["id"]: x for x in ds.json("samples", "list")}
    assert s[2]["metadata"] == {"site": "Paris", "reviewed": "yes"} and not s[2]["boundingBoxes"]
    assert s[1]["metadata"] == {"site": "Paris", "labeled_by": "fake-boxer"} and s[1]["boundingBoxes"]
    assert ds.json("jobs", "show", str(job))["counts"] == {"applied": 2, "discarded": 1}
    assert "sample 2 img1.png: changed since the job ran" in ds("proposals", "show", str(job)).stdout
    # applying changed samples 1 and 3 too: the constant label holds for any state of a sample
    assert ds("proposals", "apply", str(const)).stdout.strip() == f"Applied job {const}'s proposals to 3 samples."
    assert [x.get("label") for x in ds.json("samples", "list")] == ["same"] * 3 + [None] * 3


def test_proposals_of_a_job_that_failed_before_proposing(ds: Cli, monkeypatch: pytest.MonkeyPatch) -> None:
    def out_of_memory(self: Any, args: Any, context: Any) -> None:
        raise MemoryError("CUDA out of memory")

    monkeypatch.setattr(fake_blocks.FakeConstant, "setup", out_of_memory)
    ds("actions", "create", "c", "--step", "fake-constant")
    ds("actions", "preview", "c", expect=1)
    assert ds("proposals", "show", "1").stdout == ("Job 1 (preview of action c) failed before it proposed anything: "
                                                   "MemoryError: CUDA out of memory (see `labelblocks jobs show 1`).\n")


def test_run_reuses_preview_and_sets_metadata(ds: Cli) -> None:
    ds("actions", "create", "lab", "--step", "fake-boxer", "--step", "fake-labeler", "--set-metadata", "ai-labeled=true")
    ds.json("actions", "preview", "lab", "--limit", "2")
    fake_blocks.CALLS.clear()
    out = ds.json("actions", "run", "lab")
    assert out["applied"] == 6 and out["cached"] == 4 and out["computed"] == 8
    computed_ids = sorted({i for c in fake_blocks.CALLS for i in c["ids"]})
    assert computed_ids == [3, 4, 5, 6]
    for s in ds.json("samples", "list"):
        assert s["metadata"]["ai-labeled"] == "true" and s["label"].startswith("L-")
        assert "score" not in s["boundingBoxes"][0]
    # --no-cache recomputes; changed parameters do not reuse
    fake_blocks.CALLS.clear()
    ds("actions", "create", "lab2", "--step", "fake-labeler", "-p", "prefix=Q-")
    ds.json("actions", "preview", "lab2", "--ids", "1")
    ds.json("actions", "run", "lab2", "--no-cache")
    # sample 1 computed twice (preview, then the uncached run); the others once
    assert sorted(i for c in fake_blocks.CALLS for i in c["ids"]) == [1, 1, 2, 3, 4, 5, 6]


def test_data_categories(ds: Cli) -> None:
    ds("samples", "label", "1", "--label", "x")
    ds("samples", "disable", "2")
    cases = {"unlabeledData": [2, 3, 4, 5, 6], "enabledData": [1, 3, 4, 5, 6], "allData": [1, 2, 3, 4, 5, 6]}
    for cat, ids in cases.items():
        ds("actions", "create", cat, "--step", "fake-fail", "--data", cat)
        ds.json("actions", "preview", cat, "--limit", "100", "--no-cache")
        assert fake_blocks.CALLS[-1]["ids"] == ids, cat
    ds("actions", "create", "lyon", "--step", "fake-fail", "--data", "dataWithMetadata", "--data-key", "site",
       "--data-value", "Lyon")
    ds.json("actions", "preview", "lyon", "--no-cache")
    assert fake_blocks.CALLS[-1]["ids"] == [5, 6]


def test_failures_are_recorded_and_the_run_goes_on(ds: Cli) -> None:
    ds("actions", "create", "f", "--step", "fake-fail", "-p", "fail-ids=2,5", "-p", "raise=true",
       "--step", "fake-labeler")
    r = ds("actions", "run", "f", "--json", expect=1)
    out = json.loads(r.stdout)
    assert out["failed"] == 2 and out["applied"] == 4
    # the failing samples never reached step 2 and were not applied
    assert all(2 not in c["ids"] and 5 not in c["ids"] for c in fake_blocks.CALLS if c["block"] == "fake-labeler")
    job = ds.json("jobs", "show", str(out["jobId"]))
    assert {f["sampleId"]: f["step"] for f in job["failures"]} == {2: 1, 5: 1}
    assert "boom on [2]" in job["failures"][0]["error"]
    assert "label" not in ds.json("samples", "show", "2")
    r = ds("jobs", "show", str(out["jobId"]))
    assert "sample 5 failed at step 1" in r.stdout


def test_max_failures_stops(ds: Cli) -> None:
    ds("actions", "create", "f", "--step", "fake-fail", "-p", "fail-ids=1,2,3")
    r = ds("actions", "run", "f", "--max-failures", "1", expect=1)
    assert "more than --max-failures 1" in r.output
    [job] = ds.json("jobs", "list")
    assert job["status"] == "failed"
    assert all("label" not in s for s in ds.json("samples", "list"))


def test_missing_secret_stops_before_any_sample(ds: Cli, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FAKE_TOKEN")
    ds("actions", "create", "lab", "--step", "fake-labeler")
    r = ds("actions", "run", "lab", expect=1)
    assert "needs the secret FAKE_TOKEN" in r.output and "labelblocks secrets set FAKE_TOKEN" in r.output
    assert fake_blocks.CALLS == [] and ds.json("jobs", "list") == []
    ds("secrets", "set", "FAKE_TOKEN", "--stdin", input="stored-token-xyz")
    ds("actions", "run", "lab")
    assert fake_blocks.CALLS


def test_planted_secret_never_appears(ds: Cli, monkeypatch: pytest.MonkeyPatch, project: Path, tmp_path: Path) -> None:
    ds("secrets", "set", "LEAKY_KEY", "--stdin", input=SECRET)
    ds("actions", "create", "leak", "--step", "fake-leaky")
    outputs = [ds("actions", "preview", "leak", "--limit", "4", expect=1).output,
               ds("actions", "preview", "leak", "--limit", "4", "--json", expect=1).output]
    job = ds.json("jobs", "list")[0]["id"]
    outputs += [ds("jobs", "show", str(job)).output, ds("jobs", "show", str(job), "--json").output,
                ds("proposals", "show", str(job), "--json").output, ds("jobs", "list", "--json").output]
    ds("proposals", "apply", str(job))
    outputs.append(ds("samples", "list", "--json").output)
    for text in outputs:
        assert SECRET not in text
    assert "***" in "".join(outputs)
    for f in (project / ".labelblocks").rglob("*"):
        if f.is_file():
            assert SECRET.encode() not in f.read_bytes(), f


def test_near_duplicates_block(cli: Cli, tmp_path: Path) -> None:
    from PIL import Image

    for i in range(3):
        make_image(tmp_path / "d" / f"a{i}.png", size=(64, 64), seed=i)
        Image.open(tmp_path / "d" / f"a{i}.png").resize((50, 50)).save(tmp_path / "d" / f"b{i}.png")
    cli("upload", str(tmp_path / "d"))
    cli("actions", "create", "dd", "--step", "near-duplicates", "-p", "disable-duplicates=true")
    cli("actions", "run", "dd")
    s = {x["filename"]: x for x in cli.json("samples", "list", "--include-disabled")}
    for i in range(3):
        a, b = s[f"a{i}.png"], s[f"b{i}.png"]
        assert a["metadata"]["duplicate_group"] == b["metadata"]["duplicate_group"]
        assert not a["isDisabled"] and b["isDisabled"]
    assert len({x["metadata"]["duplicate_group"] for x in s.values()}) == 3


def test_run_resumes_after_sigkill(ds: Cli, project: Path, tmp_path: Path) -> None:
    log = tmp_path / "calls.jsonl"
    ds("actions", "create", "slow", "--step", "fake-labeler", "-p", "delay=0.4", "-p", "batch-size=1",
       "--step", "fake-boxer")
    env = {**os.environ, "FAKE_BLOCKS_LOG": str(log), "FAKE_TOKEN": "t-123456"}
    cmd = [sys.executable, "-m", "labelblocks", "--project", str(project), "actions", "run", "slow", "--json"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    kill_when(proc, project, "SELECT count(*) FROM proposals", 2)
    first = [json.loads(line) for line in log.read_text().splitlines()]
    done_before = {i for c in first for i in c["ids"]}
    assert 0 < len(done_before) < 6
    con = project_sql(project)
    assert con.execute("SELECT status FROM jobs").fetchone()[0] == "running"
    # no sample is half-applied: nothing was applied yet
    assert con.execute("SELECT count(*) FROM samples WHERE label IS NOT NULL").fetchone()[0] == 0
    finished_first = {i for (i,) in con.execute("SELECT sample_id FROM proposals WHERE step=1")}
    assert finished_first
    env["FAKE_BLOCKS_LOG"] = str(tmp_path / "calls2.jsonl")
    r = subprocess.run(cmd, env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["resumed"] and out["applied"] == 6
    second = [json.loads(line) for line in (tmp_path / "calls2.jsonl").read_text().splitlines()]
    relabeled = {i for c in second if c["block"] == "fake-labeler" for i in c["ids"]}
    assert relabeled.isdisjoint(finished_first)
    assert relabeled | finished_first == {1, 2, 3, 4, 5, 6}
    for s in ds.json("samples", "list"):
        assert s["label"] == f"L-{s['filename'][:-4]}" and len(s["boundingBoxes"]) == 1


def test_run_resumes_after_ctrl_c(ds: Cli, project: Path, tmp_path: Path) -> None:
    log = tmp_path / "calls.jsonl"
    ds("actions", "create", "slow", "--step", "fake-labeler", "-p", "delay=0.4", "-p", "batch-size=1")
    env = {**os.environ, "FAKE_BLOCKS_LOG": str(log), "FAKE_TOKEN": "t-123456"}
    cmd = [sys.executable, "-m", "labelblocks", "--project", str(project), "actions", "run", "slow", "--json"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=default_sigint)
    deadline = time.time() + 60
    while time.time() < deadline and (not log.exists() or len(log.read_text().splitlines()) < 2):
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)  # what Ctrl-C sends
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "Interrupted: run the same command again to resume." in err
    con = project_sql(project)
    assert con.execute("SELECT status FROM jobs").fetchone()[0] == "interrupted"
    assert con.execute("SELECT count(*) FROM samples WHERE label IS NOT NULL").fetchone()[0] == 0
    # every batch the block finished before the interrupt was written (the last call, cut
    # short in its sleep, was not); none is lost
    calls = [json.loads(line) for line in log.read_text().splitlines()]
    finished = {i for c in calls[:-1] for i in c["ids"]}
    kept = {i for (i,) in con.execute("SELECT sample_id FROM proposals")}
    assert kept == finished and 0 < len(kept) < 6
    env["FAKE_BLOCKS_LOG"] = str(tmp_path / "calls2.jsonl")
    r = subprocess.run(cmd, env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["resumed"] and out["applied"] == 6 and out["computed"] == 6 - len(kept)
    relabeled = {i for c in map(json.loads, (tmp_path / "calls2.jsonl").read_text().splitlines()) for i in c["ids"]}
    assert relabeled.isdisjoint(kept) and relabeled | kept == {1, 2, 3, 4, 5, 6}


def test_changed_sample_is_recomputed(ds: Cli) -> None:
    ds("actions", "create", "lab", "--step", "fake-labeler")
    ds.json("actions", "preview", "lab", "--limit", "6")
    ds("metadata", "set", "--ids", "4", "site=Nice")  # a new state of sample 4: its cached result is stale
    fake_blocks.CALLS.clear()
    out = ds.json("actions", "run", "lab")
    assert out["cached"] == 5 and out["computed"] == 1
    assert [i for c in fake_blocks.CALLS for i in c["ids"]] == [4]


def test_results_carry_the_revision_of_the_sample_they_came_from(ds: Cli, project: Path) -> None:
    """A block that read its samples: its results carry the revisions read with them, and a
    later run recomputes a sample changed since. One that never looked at them: its results
    hold for any revision of their samples and are reused even after a change."""
    from labelblocks.store.jobs import ANY_REVISION

    con = project_sql(project)

    def stored_revisions(job: int) -> dict[int, float]:
        return dict(con.execute("SELECT sample_id, revision FROM proposals WHERE job_id = ?", (job,)))

    current = dict(con.execute("SELECT id, updated_at FROM samples"))
    jobs = {}
    for block in ("fake-labeler", "fake-constant"):
        ds("actions", "create", block, "--step", block)
        jobs[block] = ds.json("actions", "preview", block, "--limit", "6")["jobId"]
    assert stored_revisions(jobs["fake-labeler"]) == current
    assert stored_revisions(jobs["fake-constant"]) == dict.fromkeys(current, ANY_REVISION)
    ds("metadata", "set", "--ids", "2", "note=changed")
    fake_blocks.CALLS.clear()
    fake_blocks.FakeConstant.calls = 0
    out = ds.json("actions", "run", "fake-labeler")
    assert (out["cached"], out["computed"], [c["ids"] for c in fake_blocks.CALLS]) == (5, 1, [[2]])
    out = ds.json("actions", "run", "fake-constant")
    assert (out["cached"], out["computed"], fake_blocks.FakeConstant.calls) == (6, 0, 0)
    assert {s["label"] for s in ds.json("samples", "list")} == {"same"}


def test_a_failed_write_fails_the_job_and_a_new_run_resumes(ds: Cli, monkeypatch: pytest.MonkeyPatch) -> None:
    """The background writer's error (here the second of three writes) stops the step and
    fails the job with that error; what was written before stays, nothing is written after,
    and the next run finishes the rest."""
    from labelblocks.executors import results as runner  # where the runner's results are written

    monkeypatch.setattr(runner, "WRITE_ROWS", 1)
    monkeypatch.setattr(fake_blocks.FakeConstant, "default_batch_size", 2)
    real = runner.write_results
    writes: list[int] = []

    def failing(store: Any, job_id: int, step: int, results: Any, secrets: list[str]) -> None:
        writes.append(results.rows)
        if len(writes) == 2:
            raise OSError("disk full")
        real(store, job_id, step, results, secrets)

    monkeypatch.setattr(runner, "write_results", failing)
    ds("actions", "create", "c", "--step", "fake-constant")
    r = ds("actions", "run", "c", expect=1)
    assert r.stderr.strip() == ("Error: job 1 failed: OSError: disk full "
                                "(`labelblocks actions run c` resumes it; see `labelblocks jobs show 1`)")
    assert writes == [2, 2]  # nothing is written after the failed write
    [job] = ds.json("jobs", "list")
    assert job["status"] == "failed" and "disk full" in job["error"]
    assert {s.get("label") for s in ds.json("samples", "list")} == {None}  # nothing applied
    fake_blocks.FakeConstant.calls = 0
    monkeypatch.setattr(runner, "write_results", real)
    out = ds.json("actions", "run", "c")
    assert out["resumed"] and out["applied"] == 6 and fake_blocks.FakeConstant.calls == 4  # 2 were written
    assert {s["label"] for s in ds.json("samples", "list")} == {"same"}


def test_a_sparse_selection_reuses_its_preview(ds: Cli) -> None:
    """A preview of scattered ids (looked up by id lists, not a range) is reused by the run."""
    ds("actions", "create", "lab", "--step", "fake-labeler")
    ds.json("actions", "preview", "lab", "--ids", "1,6")
    fake_blocks.CALLS.clear()
    out = ds.json("actions", "run", "lab")
    assert out["cached"] == 2 and out["computed"] == 4
    assert sorted(i for c in fake_blocks.CALLS for i in c["ids"]) == [2, 3, 4, 5]


@given(st.lists(st.floats(allow_nan=False, allow_infinity=False), min_size=1, max_size=50))
def test_revisions_pass_through_json_into_sqlite_exactly(values: list[float]) -> None:
    """The runner sends revisions to SQLite inside JSON (json_each); a cached result is only
    found again if every float comes back bit for bit."""
    from pydantic import TypeAdapter

    payload = TypeAdapter(list[tuple[int, float]]).dump_json(list(enumerate(values))).decode()
    con = sqlite3.connect(":memory:")
    back = [r[0] for r in con.execute("SELECT value->>1 FROM json_each(?)", (payload,))]
    assert back == values


def _json_containers(inner: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3)


_JSON = st.recursive(st.none() | st.booleans() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
                     _json_containers, max_leaves=6)
_JSON_TEXT = st.builds(lambda v, ascii_only: json.dumps(v, ensure_ascii=ascii_only), _JSON, st.booleans())


@given(st.lists(st.tuples(_JSON_TEXT, st.none() | _JSON_TEXT, st.none() | st.floats(allow_nan=False, allow_infinity=False)),
                min_size=1, max_size=30))
def test_stored_texts_pass_through_json_into_sqlite_exactly(rows: list[tuple[str, str | None, float | None]]) -> None:
    """Cached or external results are stored by one json_each statement: every change and
    record text (JSON texts, any unicode) and every revision comes back as it went in."""
    from labelblocks.store.jobs import INSERT_TEXT_ROWS

    con = sqlite3.connect(":memory:")
    con.execute("CREATE TABLE proposals (job_id, sample_id, step, change, record, revision)")
    con.execute(INSERT_TEXT_ROWS.sqlite, (7, 2, json.dumps([(i, *r) for i, r in enumerate(rows)])))
    back = con.execute("SELECT job_id, step, change, record, revision FROM proposals ORDER BY sample_id").fetchall()
    assert back == [(7, 2, *r) for r in rows]


def test_writer_writes_in_order_and_raises_a_failed_write() -> None:
    from labelblocks.store.writer import BackgroundWriter

    written: list[int] = []

    def write(n: int) -> None:
        if n == 3:
            raise OSError("disk full")
        time.sleep(0.01)
        written.append(n)

    w = BackgroundWriter()
    for n in (1, 2):
        w.submit(lambda n=n: write(n))
    w.close()
    assert written == [1, 2]
    w = BackgroundWriter()
    for n in (1, 3, 4):  # after the failure, later writes are not attempted
        w.submit(lambda n=n: write(n))
    with pytest.raises(OSError, match="disk full"):
        w.close()
    assert written == [1, 2, 1]


def test_a_sample_deleted_after_preview_is_skipped_on_apply(ds: Cli, project: Path) -> None:
    ds("actions", "create", "lab", "--step", "fake-labeler")
    job = ds.json("actions", "preview", "lab", "--limit", "6")["jobId"]
    ds("samples", "delete", "3")
    assert "sample 3: deleted since the job ran" in ds("proposals", "show", str(job)).output
    ds("proposals", "apply", str(job))
    labels = {s["id"]: s["label"] for s in ds.json("samples", "list")}
    assert labels == {1: "L-img0", 2: "L-img1", 4: "L-img3", 5: "L-img4", 6: "L-img5"}
    assert "5 applied, 1 discarded" in ds("jobs", "show", str(job)).output


def test_apply_in_many_chunks_with_a_sample_deleted(ds: Cli, project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Chunks are written by the background writer while the next is prepared: every
    chunk's boxes, metadata and status land, and a sample deleted in a middle chunk is
    recorded as discarded without failing its chunk."""
    from labelblocks import apply

    monkeypatch.setattr(apply, "APPLY_ROWS", 2)
    ds("actions", "create", "box", "--step", "fake-boxer", "-p", "label=cat", "--set-metadata", "ai-labeled=true")
    job = ds.json("actions", "preview", "box", "--limit", "6")["jobId"]
    ds("samples", "delete", "4")
    ds("proposals", "apply", str(job))
    samples = {s["id"]: s for s in ds.json("samples", "list")}
    assert sorted(samples) == [1, 2, 3, 5, 6]
    for s in samples.values():
        assert [(b["label"], b["width"], b["height"]) for b in s["boundingBoxes"]] == [("cat", 20, 10)]
        assert "score" not in s["boundingBoxes"][0]
        assert s["metadata"]["ai-labeled"] == "true" and s["metadata"]["labeled_by"] == "fake-boxer"
    assert "5 applied, 1 discarded" in ds("jobs", "show", str(job)).output
    con = project_sql(project)
    assert con.execute("SELECT count(*) FROM job_applied WHERE job_id = ?", (job,)).fetchone()[0] == 3


def test_applying_no_change_keeps_the_sample_untouched(ds: Cli, project: Path) -> None:
    """A proposal that changes nothing is applied (the job counts it) without writing the
    sample, so its revision, and the results cached for it, stay valid."""
    ds("actions", "create", "noop", "--step", "relabel", "-p", "mapping=dog -> wolf")
    con = project_sql(project)
    before = con.execute("SELECT id, updated_at FROM samples ORDER BY id").fetchall()
    job = ds.json("actions", "preview", "noop", "--limit", "6")["jobId"]
    ds("proposals", "apply", str(job))
    assert "6 applied" in ds("jobs", "show", str(job)).output
    assert con.execute("SELECT id, updated_at FROM samples ORDER BY id").fetchall() == before
    # the applied preview counts as the action's run on those samples: a run passes them over
    ran = ds.json("actions", "run", "noop")
    assert ran["unchanged"] == 6 and ran["cached"] == 0
    # with --all it computes them again, and the preview's results (same revision) are reused
    assert ds.json("actions", "run", "noop", "--all")["cached"] == 6


def test_a_sample_deleted_during_a_run_fails_alone(ds: Cli, project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from labelblocks.project import open_store

    label = fake_blocks.FakeLabeler.label

    def deleting(self: Any, batch: Any, args: Any, context: Any) -> Any:
        if not fake_blocks.CALLS:  # while the first batch (1-4) runs, sample 5 of the next goes
            with open_store(project) as store:
                store.delete_samples([5])
        return label(self, batch, args, context)

    monkeypatch.setattr(fake_blocks.FakeLabeler, "label", deleting)
    ds("actions", "create", "lab", "--step", "fake-labeler")
    out = ds.json("actions", "run", "lab", expect=1)
    assert out["applied"] == 5 and out["failed"] == 1
    assert {s["id"]: s["label"] for s in ds.json("samples", "list")} == {
        1: "L-img0", 2: "L-img1", 3: "L-img2", 4: "L-img3", 6: "L-img5"}
    [err] = ds.json("jobs", "show", str(out["jobId"]))["failures"]
    assert err["sampleId"] == 5 and "sample 5 was deleted" in err["error"]


def test_v2_jobs_migrate(tmp_path: Path) -> None:
    """A project written before jobs packed their sample ids keeps its jobs' states."""
    from sqlalchemy import create_engine

    from labelblocks.store import Store
    from labelblocks.store.jobs import job_state
    from labelblocks.store.schema import MIGRATIONS, current_version

    root = tmp_path / ".labelblocks"
    root.mkdir()
    engine = create_engine(f"sqlite:///{root / 'project.db'}")
    with engine.begin() as conn:
        current_version(conn)
        for v, fn in MIGRATIONS[:2]:
            fn(conn)
            conn.exec_driver_sql("INSERT INTO schema_migrations VALUES (?, 0)", (v,))
        conn.exec_driver_sql("ALTER TABLE jobs DROP COLUMN sample_ids")  # the v2 shape
        conn.exec_driver_sql("INSERT INTO jobs (id, action, kind, status, definition, definition_hash, usage, "
                             "created_at, updated_at) VALUES (7, 'a', 'run', 'interrupted', '{}', 'h', '{}', 0, 0)")
        conn.exec_driver_sql("INSERT INTO job_samples (job_id, sample_id, status) VALUES "
                             "(7, 3, 'applied'), (7, 1, 'pending'), (7, 2, 'failed'), (7, 5, 'applied')")
    engine.dispose()
    with Store.open(root) as store:
        state = job_state(store, 7)
        assert state.ids == [1, 2, 3, 5]
        assert state.applied == {3, 5} and state.failed == {2} and state.pending() == [1]
        assert state.counts() == {"pending": 1, "applied": 2, "failed": 1}


def test_example_dataset_chain_dedup_then_relabel(cli: Cli, tmp_path: Path) -> None:
    """The README's quickstart: the shipped example dataset, a two-step chain of built-in blocks."""
    repo = Path(__file__).resolve().parents[1]
    subprocess.run([sys.executable, str(repo / "examples" / "make_dataset.py"), str(tmp_path / "ex")], check=True,
                   capture_output=True)
    cli("upload", "--info-file", str(tmp_path / "ex" / "images" / "info.labels"))
    cli("actions", "create", "clean", "--step", "near-duplicates", "-p", "disable-duplicates=true",
        "--step", "relabel", "-p", "mapping=square -> box\ncircle -> ring", "-p", "min-box-area=1",
        "--set-metadata", "ai-labeled=true")
    preview = cli("actions", "preview", "clean", "--limit", "4").stdout
    assert "label: square -> box" in preview and "boxes removed: 1 (speck)" in preview and "disabled" in preview
    assert "metadata duplicate_group: - ->" in preview
    out = cli.json("actions", "run", "clean")
    assert out["applied"] == 24 and out["failed"] == 0
    samples = cli.json("samples", "list", "--include-disabled")
    assert {s["label"] for s in samples} == {"box", "ring"}
    assert all(b["label"] == s["label"] for s in samples for b in s["boundingBoxes"])  # specks removed, rest renamed
    assert sum(s["isDisabled"] for s in samples) == 12  # one frame of each near-identical pair
    groups: dict[str, set[str]] = {}
    for s in samples:
        groups.setdefault(s["metadata"]["duplicate_group"], set()).add(s["metadata"]["video_file"])
        assert s["metadata"]["ai-labeled"] == "true"
    assert len(groups) == 12 and all(len(v) == 1 for v in groups.values())


@pytest.mark.parametrize(("params", "message"), [
    (["mapping=square box"], "mapping: mapping line 1: expected `old -> new`"),
    (["mapping= -> x"], "the label to rename is empty"),
    (["min-box-area=150"], "min-box-area: expected 0 to 100"),
])
def test_relabel_arguments_checked_when_saved(cli: Cli, params: list[str], message: str) -> None:
    args = [x for p in params for x in ("-p", p)]
    r = cli("actions", "create", "bad", "--step", "relabel", *args, expect=1).stderr
    assert message in r and "step 1 (relabel)" in r
    assert cli.json("actions", "list") == []


def test_a_whole_set_block_is_never_reused_and_later_steps_only_by_what_they_read(cli: Cli, tmp_path: Path) -> None:
    """near-duplicates' result depends on which samples it sees together: a preview of 2 samples
    must not stand in for the run over all of them. A later step is reused only where what it
    reads (relabel: labels and boxes, which near-duplicates does not change) is the same."""
    from PIL import Image

    make_image(tmp_path / "d" / "a.png", size=(64, 64), seed=1)
    make_image(tmp_path / "d" / "c.png", size=(64, 64), seed=2)
    Image.open(tmp_path / "d" / "a.png").resize((50, 50)).save(tmp_path / "d" / "b.png")
    cli("upload", str(tmp_path / "d"), "--no-label")
    cli("actions", "create", "dd", "--step", "near-duplicates", "--step", "relabel")
    cli.json("actions", "preview", "dd", "--ids", "1,3")  # a.png and c.png: no duplicates among them
    out = cli.json("actions", "run", "dd")
    assert out["cached"] == 2 and out["computed"] == 3 + 1  # near-duplicates on all 3; relabel on b.png only
    s = {x["filename"]: x for x in cli.json("samples", "list")}
    assert s["a.png"]["metadata"]["duplicate_group"] == s["b.png"]["metadata"]["duplicate_group"]


def test_batch_gc_collects_less_often_inside_and_restores_after() -> None:
    import gc

    from labelblocks.store.writer import GC_YOUNG, batch_tuning

    before = gc.get_threshold()
    with pytest.raises(RuntimeError), batch_tuning():
        assert gc.get_threshold() == (max(before[0], GC_YOUNG), *before[1:])
        raise RuntimeError("a block failed")
    assert gc.get_threshold() == before


def test_batch_gc_of_steps_in_several_threads_restores_when_the_last_ends() -> None:
    """Two steps at once (two threads of one process), the first to start ending first: the
    settings stay tuned until the second ends, then are the ones from before either."""
    import gc

    from labelblocks.store.writer import GC_YOUNG, SWITCH_INTERVAL, batch_tuning

    before, switch = gc.get_threshold(), sys.getswitchinterval()
    tuned = ((max(before[0], GC_YOUNG), *before[1:]), min(switch, SWITCH_INTERVAL))
    second_in, first_out, seen = threading.Event(), threading.Event(), []

    def second() -> None:
        with batch_tuning():
            second_in.set()
            first_out.wait(10)
            seen.append((gc.get_threshold(), sys.getswitchinterval()))

    with batch_tuning():
        t = threading.Thread(target=second)
        t.start()
        assert second_in.wait(10)
        seen.append((gc.get_threshold(), sys.getswitchinterval()))
    first_out.set()
    t.join(10)
    assert seen == [tuned, tuned] and tuned != (before, switch)
    assert (gc.get_threshold(), sys.getswitchinterval()) == (before, switch)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    both_dialects(metafunc)


def test_two_actions_run_at_once_both_finish(ds: Cli, project: Path, tmp_path: Path) -> None:
    """Two processes run different actions on one project at the same time (writers take turns,
    on either dialect): both finish and nothing either wrote is lost."""
    ds("actions", "create", "labels", "--step", "fake-labeler", "-p", "delay=0.05", "-p", "batch-size=1")
    ds("actions", "create", "boxes", "--step", "fake-boxer", "-p", "label=thing")
    env = {**os.environ, "FAKE_TOKEN": "t-123456"}
    procs = [subprocess.Popen([sys.executable, "-m", "labelblocks", "--project", str(project), "actions", "run", name,
                               "--json"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for name in ("labels", "boxes")]
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        assert json.loads(out)["failed"] == 0
    for s in ds.json("samples", "list"):
        assert s["label"] == f"L-{s['filename'][:-4]}" and [b["label"] for b in s["boundingBoxes"]] == ["thing"]
