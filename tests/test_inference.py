"""Inference: published actions answering over HTTP from a real `labelblocks serve` on
loopback, called by the real `inference-sdk` client package (in a virtual environment of its
own: its pins of numpy and Pillow clash with the project's), custom metadata attached with
`requests` exactly as the seed does, stats grouped by it, dynamic batching, the log surviving
a SIGKILL, and logged inferences coming back as proposals."""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from .conftest import Cli, make_image, project_sql

SDK_VERSION = "1.8.3"
SEED = """
import json, sys
import requests
from inference_sdk import InferenceHTTPClient

url, api_key, workspace, image_path, model_id = sys.argv[1:6]
client = InferenceHTTPClient(api_url=url, api_key=api_key)
result = client.infer(image_path, model_id=model_id)
response = requests.post(f"{url}/{workspace}/inference-stats/metadata", json={
    "api_key": api_key,
    "data": [{"inference_ids": [result["inference_id"]], "field_name": "camera_location", "field_value": "canada"}],
})
print(json.dumps({"result": result, "metadata": response.json(), "status": response.status_code}))
"""


@pytest.fixture(scope="session")
def sdk_python() -> Path:
    """A virtual environment with inference-sdk (made once, kept in ~/.cache)."""
    venv = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "labelblocks-tests" / f"inference-sdk-{SDK_VERSION}"
    python = venv / "bin" / "python"
    if not (venv / "ok").exists():
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", f"inference-sdk=={SDK_VERSION}"], check=True,
                       timeout=900)
        (venv / "ok").write_text("")
    return python


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Served:
    def __init__(self, proc: subprocess.Popen[str], url: str, log: Path) -> None:
        self.proc, self.url, self.log = proc, url, log


def serve(project: Path, log: Path, *extra: str, env: dict[str, str] | None = None) -> Served:
    port = free_port()
    out = open(log, "w")  # noqa: SIM115 - closed with the process
    proc = subprocess.Popen([sys.executable, "-m", "labelblocks", "--project", str(project), "serve", "--port",
                             str(port), *extra], stdout=out, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, **(env or {})})
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            if requests.get(url + "/healthz", timeout=2).ok:
                return Served(proc, url, log)
        except requests.ConnectionError:
            time.sleep(0.2)
    proc.kill()
    raise AssertionError(f"the server did not start:\n{log.read_text()}")


@pytest.fixture
def served(cli: Cli, tmp_path: Path) -> Iterator[tuple[Cli, Served, str, list[Path]]]:
    """Images, a published OWL-ViT action on a tiny checkpoint (boxes/1), a published
    relabel-only action (names/1), a published counting boxer (count/1), and the server."""
    pytest.importorskip("transformers")
    from .blocks.tiny_models import make_owl

    model = make_owl(tmp_path / "owl")
    images = [make_image(tmp_path / "im" / f"street.{i}.png", size=(96, 64), seed=i) for i in range(4)]
    cli("actions", "create", "boxes", "--step", "owlvit", "-p", f"model={model}", "-p", "prompt=a cat (cat, 0.01)",
        "-p", "precision=fp32")
    cli("actions", "create", "names", "--step", "relabel", "-p", "mapping=street -> road")
    cli("actions", "create", "count", "--step", "fake-boxer", "-p", "label=thing")
    for name in ("boxes", "names", "count"):
        assert f"Published {name}/1" in cli("actions", "publish", name).stdout
    key = cli.json("keys", "create")["key"]
    s = serve(cli.project, tmp_path / "server.log", "--keep-images", "all", "--max-batch-delay-ms", "50",
              env={"FAKE_BLOCKS_LOG": str(tmp_path / "calls.jsonl")})
    try:
        yield cli, s, key, images
    finally:
        s.proc.terminate()
        s.proc.wait(timeout=30)


def test_the_seeds_snippet_against_labelblocks_serve(served: tuple[Cli, Served, str, list[Path]],
                                                     sdk_python: Path, tmp_path: Path) -> None:
    cli, s, key, images = served
    workspace = cli.project.name
    script = tmp_path / "seed.py"
    script.write_text(SEED)
    run = subprocess.run([str(sdk_python), str(script), s.url, key, workspace, str(images[0]), "boxes/1"],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    out = json.loads(run.stdout.strip().splitlines()[-1])
    result = out["result"]
    assert out["status"] == 200 and out["metadata"] == {"status": "ok"}
    assert result["image"] == {"width": 96, "height": 64} and result["predictions"]
    # the same boxes as a preview of the same action on the same image
    cli("upload", str(images[0]), "--no-label")
    job = cli.json("actions", "preview", "boxes", "--limit", "1")["jobId"]
    [p] = cli.json("proposals", "show", str(job))["proposedChanges"]
    boxes = p["proposedChanges"]["boundingBoxes"]
    assert len(result["predictions"]) == len(boxes)
    for pred, b in zip(sorted(result["predictions"], key=lambda x: -x["confidence"]), boxes, strict=True):
        assert (pred["x"], pred["y"]) == (b["x"] + b["width"] / 2, b["y"] + b["height"] / 2)
        assert pred["class"] == "cat" and pred["confidence"] == pytest.approx(b["score"], abs=1e-4)
    # the metadata is there, grouped in the stats, and in the CLI
    stats = requests.get(f"{s.url}/{workspace}/inference-stats", params={"groupBy": "camera_location",
                                                                          "api_key": key}, timeout=30).json()
    assert stats["num_inferences"] >= 1 and {"value": "canada"}.items() <= stats["groups"][0].items()
    assert stats["inference_stats"][0]["model_name"] == "boxes/1"
    listed = cli.json("inferences", "list", "--where", "camera_location=canada")
    assert [x["inference_id"] for x in listed] == [result["inference_id"]]
    text = cli("monitor", "--by", "camera_location", "--since", "1h", "--plot", str(tmp_path / "m.png")).stdout
    assert "canada" in text and (tmp_path / "m.png").stat().st_size > 1000
    # the review page shows the same, grouped by the field
    web = requests.Session()
    web.post(f"{s.url}/signin", data={"key": key, "next": "/"}, timeout=30)
    page = web.get(f"{s.url}/monitor", params={"by": "camera_location"}, timeout=60).text
    assert "Inference monitoring" in page and "canada" in page and "data:image/png;base64," in page
    # the classification shape, from the same client
    names = subprocess.run([str(sdk_python), "-c", (
        "import sys, json; from inference_sdk import InferenceHTTPClient; "
        "print(json.dumps(InferenceHTTPClient(api_url=sys.argv[1], api_key=sys.argv[2]).infer(sys.argv[3], "
        "model_id='names/1')))"), s.url, key, str(images[1])], capture_output=True, text=True, timeout=300)
    assert names.returncode == 0, names.stderr
    answer = json.loads(names.stdout.strip().splitlines()[-1])
    assert answer["predictions"] == [] and "inference_id" in answer and answer["image"]["width"] == 96
    # keys never reach the server's log
    time.sleep(0.5)
    assert key not in s.log.read_text()


def _b64(path: Path) -> dict[str, str]:
    return {"type": "base64", "value": base64.b64encode(path.read_bytes()).decode()}


def test_bad_input_is_refused_and_not_logged(served: tuple[Cli, Served, str, list[Path]], tmp_path: Path) -> None:
    cli, s, key, images = served
    url = s.url + "/infer/object_detection"
    cases = [
        ({"api_key": key, "model_id": "nope/1", "image": _b64(images[0])}, 404, "no model nope/1"),
        ({"api_key": key, "model_id": "boxes/9", "image": _b64(images[0])}, 404, "version 9"),
        ({"api_key": key, "model_id": "boxes/1", "image": {"type": "base64", "value": "%%%"}}, 400, "not base64"),
        ({"api_key": key, "model_id": "boxes/1", "image": {"type": "base64", "value": base64.b64encode(b"junk").decode()}},
         400, "not a readable image"),
        ({"api_key": key, "model_id": "boxes/1", "image": {"type": "url", "value": "http://x"}}, 400, "base64"),
        ({"api_key": "ei_wrong", "model_id": "boxes/1", "image": _b64(images[0])}, 401, "API key"),
        ({"model_id": "boxes/1", "image": _b64(images[0])}, 401, "API key"),
        ({"api_key": key, "model_id": ["boxes/1"], "image": _b64(images[0])}, 400, "model_id"),
        ({"api_key": key, "model_id": "boxes/" + "9" * 30, "image": _b64(images[0])}, 400, "the version is a number"),
    ]
    for body, status, message in cases:
        r = requests.post(url, json=body, timeout=60)
        assert r.status_code == status and message in r.json()["message"], (body.get("model_id"), r.text)
    assert cli.json("inferences", "list") == []  # nothing logged for a refused request
    # metadata for unknown ids: listed, nothing written
    ok = requests.post(url, params={"api_key": key}, json={"model_id": "count/1", "image": _b64(images[0])},
                       timeout=60).json()
    r = requests.post(f"{s.url}/{cli.project.name}/inference-stats/metadata", params={"api_key": key}, json={
        "data": [{"inference_ids": [ok["inference_id"], "no-such-id"], "field_name": "site", "field_value": "x"}]},
        timeout=30)
    assert r.status_code == 400 and "no-such-id" in r.json()["message"]
    assert cli.json("inferences", "list")[0]["metadata"] == {}
    r = requests.post(f"{s.url}/elsewhere/inference-stats/metadata", params={"api_key": key}, json={"data": []},
                      timeout=30)
    assert r.status_code == 404
    # the native route, in the protocol's vocabulary
    r = requests.post(f"{s.url}/v1/api/1/infer/count", headers={"x-api-key": key},
                      data=images[1].read_bytes(), timeout=60).json()
    assert r["success"] and r["model"] == "count/1" and r["change"]["boundingBoxes"][0]["label"] == "thing"


def test_concurrent_requests_are_batched(served: tuple[Cli, Served, str, list[Path]], tmp_path: Path) -> None:
    cli, s, key, images = served
    body = {"api_key": key, "model_id": "count/1", "image": _b64(images[0])}
    acked: list[str] = []

    def client() -> None:
        for _ in range(4):
            r = requests.post(s.url + "/infer/object_detection", json=body, timeout=60)
            assert r.status_code == 200, r.text
            acked.append(r.json()["inference_id"])

    threads = [threading.Thread(target=client) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(acked) == 64
    calls = [json.loads(line) for line in (tmp_path / "calls.jsonl").read_text().splitlines()]
    sizes = [len(c["ids"]) for c in calls if c["block"] == "fake-boxer"]
    assert sum(sizes) == 64 and max(sizes) > 1  # 16 clients shared batches
    # every acknowledged inference is in the log, even after a SIGKILL
    s.proc.send_signal(signal.SIGKILL)
    s.proc.wait(timeout=30)
    db = project_sql(cli.project)
    logged = {r[0] for r in db.execute("SELECT id FROM inferences WHERE model = 'count/1'")}
    assert set(acked) <= logged


def test_hard_cases_come_back_as_proposals(served: tuple[Cli, Served, str, list[Path]]) -> None:
    cli, s, key, images = served
    ids = []
    for img in images[:3]:
        r = requests.post(s.url + "/infer/object_detection",
                          json={"api_key": key, "model_id": "boxes/1", "image": _b64(img)}, timeout=60).json()
        ids.append(r["inference_id"])
    requests.post(f"{s.url}/1/inference-stats/metadata", json={"api_key": key, "data": [
        {"inference_ids": ids[:2], "field_name": "camera_location", "field_value": "canada"}]}, timeout=30)
    done = cli.json("inferences", "add-to-dataset", "--where", "camera_location=canada")
    assert done["samples"] == 2 and len(done["jobs"]) == 1
    samples = {x["id"]: x for x in cli.json("samples", "list")}
    assert {samples[i]["metadata"]["camera_location"] for i in done["sampleIds"]} == {"canada"}
    job = done["jobs"][0]
    props = cli.json("proposals", "show", str(job))["proposedChanges"]
    logged = {x["inference_id"]: x for x in cli.json("inferences", "list")}
    for p in props:
        iid = samples[p["sampleId"]]["metadata"]["inference_id"]
        assert [b["label"] for b in p["proposedChanges"]["boundingBoxes"]] == logged[iid]["classes"]
    again = cli.json("inferences", "add-to-dataset", "--where", "camera_location=canada")
    assert again["samples"] == 0 and again["reused"] == 2  # each inference is added once
    cli("proposals", "apply", str(job))
    assert all(samples_after["boundingBoxes"] for samples_after in cli.json("samples", "list"))


def test_a_single_block_served_as_a_model(cli: Cli, tmp_path: Path) -> None:
    from labelblocks.server import BackgroundServer

    img = make_image(tmp_path / "one.png", size=(64, 48))
    cli("actions", "publish", "things", "--step", "fake-boxer", "-p", "label=thing")
    assert cli.json("actions", "list") == []  # no action saved
    cli("actions", "create", "taken", "--step", "fake-boxer")
    assert "is a saved action" in cli("actions", "publish", "taken", "--step", "fake-boxer", expect=1).output
    assert "no block named 'nope'" in cli("actions", "publish", "x", "--step", "nope", expect=1).output
    key = cli.json("keys", "create")["key"]
    with BackgroundServer(cli.project) as srv:
        r = requests.post(srv.url.removesuffix("/v1") + "/infer/object_detection", timeout=60, json={
            "api_key": key, "model_id": "things/1", "image": _b64(img)}).json()
    assert [p["class"] for p in r["predictions"]] == ["thing"]


def test_a_slow_model_load_does_not_hold_up_the_other_models(cli: Cli, tmp_path: Path) -> None:
    """While one model loads (seconds for a detector), requests to a model already loaded are
    answered, and a second request for the loading model waits for that same load."""
    from labelblocks.server import BackgroundServer

    from . import fake_blocks

    img = _b64(make_image(tmp_path / "one.png", size=(64, 48)))
    cli("actions", "publish", "quick", "--step", "fake-boxer", "-p", "label=thing")
    cli("actions", "publish", "slow", "--step", "fake-boxer", "-p", "label=slowpoke")
    key = cli.json("keys", "create")["key"]
    gate = fake_blocks.SETUP_GATES["slowpoke"] = threading.Event()
    fake_blocks.SETUP_STARTED.pop("slowpoke", None)
    fake_blocks.SETUPS.pop("slowpoke", None)
    try:
        with BackgroundServer(cli.project) as srv:
            url = srv.url.removesuffix("/v1") + "/infer/object_detection"

            def infer(model: str) -> list[str]:
                r = requests.post(url, timeout=60, json={"api_key": key, "model_id": model, "image": img})
                assert r.status_code == 200, r.text
                return [p["class"] for p in r.json()["predictions"]]

            assert infer("quick/1") == ["thing"]
            slow: list[list[str]] = []
            waiting = [threading.Thread(target=lambda: slow.append(infer("slow/1"))) for _ in range(2)]
            for t in waiting:
                t.start()
            assert fake_blocks.SETUP_STARTED.setdefault("slowpoke", threading.Event()).wait(30)
            t0 = time.monotonic()
            assert infer("quick/1") == ["thing"]  # answered while slow/1 is still loading
            assert time.monotonic() - t0 < 10 and not gate.is_set() and not slow
            gate.set()
            for t in waiting:
                t.join(60)
            assert slow == [["slowpoke"], ["slowpoke"]]
            assert fake_blocks.SETUPS["slowpoke"] == 1  # one load for both requests
            loaded = requests.get(srv.url.removesuffix("/v1") + "/model/registry", params={"api_key": key},
                                  timeout=30).json()
            assert sorted(m["model_id"] for m in loaded["models"]) == ["quick/1", "slow/1"]
    finally:
        gate.set()
        fake_blocks.SETUP_GATES.pop("slowpoke", None)


def test_keep_images_low_confidence_only(cli: Cli, tmp_path: Path) -> None:
    from labelblocks.inference import parse_keep

    keep = parse_keep("low-confidence:0.5")
    assert keep([0.2, 0.4]) and keep([]) and not keep([0.3, 0.9])
    assert "expected off, all or low-confidence:T" in cli("serve", "--keep-images", "some", expect=1).output

