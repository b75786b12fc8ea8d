"""The HTTP API on loopback: the protocol's own generated Python client (edgeimpulse-api,
unmodified) against it, API keys, the ingestion service, and hostile input."""

from __future__ import annotations

import io
import json
import struct
import subprocess
import sys
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

import edgeimpulse_api as ei
import pytest
import requests
import soundfile as sf

from labelblocks.server import BackgroundServer, JobScope, Limits
from labelblocks.store import Store

from .conftest import Cli, corrupt_stored_copy, make_audio, make_image
from .services import free_port


@pytest.fixture
def data(cli: Cli, tmp_path: Path) -> Cli:
    for i, site in enumerate(["Paris", "Paris", "Lyon", "Lyon"]):
        make_image(tmp_path / "imgs" / f"cat.{i}.png", size=(64, 48), seed=i)
        cli("upload", str(tmp_path / "imgs" / f"cat.{i}.png"), "--metadata", f"site={site}")
    make_audio(tmp_path / "aud" / "dog.wav", seconds=0.5, rate=8000)
    cli("upload", str(tmp_path / "aud" / "dog.wav"), "--metadata", "site=Paris", "--metadata", "device=mic")
    return cli


@pytest.fixture
def server(data: Cli, project: Path, store: Store) -> Iterator[BackgroundServer]:
    with BackgroundServer(project, store=store, limits=Limits(json_bytes=64 * 1024, upload_bytes=2 * 1024 * 1024,
                                                               file_bytes=1024 * 1024)) as srv:
        yield srv


@pytest.fixture
def key(data: Cli) -> str:
    return data.json("keys", "create", "--name", "tests")["key"]


@pytest.fixture
def api(server: BackgroundServer, key: str) -> ei.RawDataApi:
    cfg = ei.Configuration(host=server.url, api_key={"ApiKeyAuthentication": key})
    return ei.RawDataApi(ei.ApiClient(cfg))


def _get(server: BackgroundServer, path: str, key: str | None, **kw: object) -> requests.Response:
    headers = {"x-api-key": key} if key else {}
    return requests.get(server.url + path, headers=headers, timeout=30, **kw)  # type: ignore[arg-type]


def _post(server: BackgroundServer, path: str, key: str | None, **kw: object) -> requests.Response:
    headers = {"x-api-key": key} if key else {}
    headers.update(kw.pop("headers", {}))  # type: ignore[arg-type]
    base = server.host if path.endswith("/files") else server.url  # ingestion sits beside /v1
    return requests.post(base + path, headers=headers, timeout=30, **kw)  # type: ignore[arg-type]


def test_edgeimpulse_client_reads(data: Cli, server: BackgroundServer, key: str, api: ei.RawDataApi,
                                  tmp_path: Path) -> None:
    projects = ei.ProjectsApi(api.api_client).list_projects()
    assert [p.id for p in projects.projects] == [1] and projects.projects[0].name == "proj"
    page = api.list_samples(1, "all", limit=10, metadata=json.dumps([{"key": "site", "op": "eq", "values": ["Lyon"]}]))
    assert page.total_count == 2 and sorted(s.id for s in page.samples) == [3, 4]
    page = api.list_samples(1, "training", limit=2, offset=0, sort_by="id-asc",
                            metadata=json.dumps([{"key": "device", "op": "neq"}]))
    assert page.total_count == 4 and [s.id for s in page.samples] == [1, 2]
    assert api.list_samples(1, "all", labels=json.dumps(["dog"])).samples[0].filename == "dog.wav"
    got = api.get_sample(1, 2)
    assert got.sample.filename == "cat.1.png" and got.sample.label == "cat" and got.sample.metadata == {"site": "Paris"}
    assert (got.sample.image_dimensions.width, got.sample.image_dimensions.height) == (64, 48)
    img = api.get_sample_as_image(1, 2, _preload_content=False)
    assert img.data == (tmp_path / "imgs" / "cat.1.png").read_bytes()
    raw = api.get_sample_as_raw(1, 5, _preload_content=False)
    original = _get(server, "/api/1/raw-data/5/original", key)
    assert raw.data == original.content == (tmp_path / "aud" / "dog.wav").read_bytes()
    assert "dog.wav" in original.headers["content-disposition"]
    assert _get(server, "/api/1/raw-data/99/original", key).status_code == 404
    audio = api.get_sample(1, 5)
    assert audio.sample.frequency == 8000 and audio.sample.values_count == 4000
    wav = api.get_sample_as_audio(1, 5, 0, _preload_content=False)
    samples, rate = sf.read(io.BytesIO(wav.data))
    assert rate == 8000 and len(samples) == 4000
    part = api.get_sample_as_audio(1, 5, 0, slice_start=100, slice_end=300, _preload_content=False)
    assert len(sf.read(io.BytesIO(part.data))[0]) == 200


def test_stored_audio_gone_bad_is_a_clear_error(data: Cli, server: BackgroundServer, key: str, project: Path,
                                                tmp_path: Path) -> None:
    corrupt_stored_copy(project, tmp_path / "aud" / "dog.wav", b"RIFF\x00\x00\x00\x00WAVEjunk")
    for path in ("/api/1/raw-data/5", "/api/1/raw-data/5/wav?sliceStart=1&sliceEnd=9"):
        r = _get(server, path, key)
        assert r.status_code == 500, path
        assert r.json() == {"success": False,
                            "error": "the stored audio cannot be read: not audio that libsndfile reads "
                                     "(WAV, FLAC, OGG, ...): Error in WAV file. No 'data' chunk marker."}
    assert _get(server, "/api/1/raw-data/5?limitPayloadValues=0", key).json()["sample"]["filename"] == "dog.wav"


def test_edgeimpulse_client_writes(data: Cli, api: ei.RawDataApi) -> None:
    api.set_sample_bounding_boxes(1, 1, ei.SampleBoundingBoxesRequest(
        boundingBoxes=[ei.BoundingBox(label="cat", x=2, y=3, width=10, height=12)]))
    api.edit_label(1, 1, ei.EditSampleLabelRequest(label="tabby"))
    api.set_sample_metadata(1, 1, ei.SetSampleMetadataRequest(metadata={"reviewed": "yes"}))
    api.disable_sample(1, 2)
    # the published audio block writes ranges overlapping by one index: accepted and normalised
    api.set_sample_structured_labels(1, 5, ei.SetSampleStructuredLabelsRequest(structuredLabels=[
        ei.StructuredLabel(startIndex=0, endIndex=2000, label="bark"),
        ei.StructuredLabel(startIndex=2000, endIndex=3999, label="other")]))
    s1 = data.json("samples", "show", "1")
    assert s1["label"] == "tabby" and s1["metadata"] == {"site": "Paris", "reviewed": "yes"}
    assert s1["boundingBoxes"] == [{"label": "cat", "x": 2, "y": 3, "width": 10, "height": 12}]
    assert data.json("samples", "show", "2")["isDisabled"] is True
    api.enable_sample(1, 2)
    assert data.json("samples", "show", "2")["isDisabled"] is False
    assert data.json("samples", "show", "5")["structuredLabels"] == [
        {"startIndex": 0, "endIndex": 2000, "label": "bark"}, {"startIndex": 2001, "endIndex": 3999, "label": "other"}]
    with pytest.raises(ei.exceptions.ApiException) as e:
        api.set_sample_bounding_boxes(1, 1, ei.SampleBoundingBoxesRequest(
            boundingBoxes=[ei.BoundingBox(label="cat", x=60, y=3, width=10, height=12)]))
    assert e.value.status == 400 and "does not fit in the 64x48 image" in e.value.body
    assert data.json("samples", "show", "1")["boundingBoxes"][0]["x"] == 2  # the bad write changed nothing


def test_edgeimpulse_client_proposed_changes(data: Cli, api: ei.RawDataApi, server: BackgroundServer,
                                             key: str) -> None:
    data("actions", "create", "boxes", "--step", "fake-boxer", "-p", "label=ear")
    job = data.json("actions", "preview", "boxes", "--ids", "1,2")["jobId"]
    # reading with proposedActionsJobId shows the job's proposals applied; without, the dataset
    page = api.list_samples(1, "all", limit=10, sort_by="id-asc", proposed_actions_job_id=job)
    assert [len(s.bounding_boxes) for s in page.samples] == [1, 1, 0, 0, 0]
    assert [len(s.bounding_boxes) for s in api.list_samples(1, "all", limit=10).samples] == [0] * 5
    assert api.get_sample(1, 1, proposed_actions_job_id=job).sample.bounding_boxes[0].label == "ear"
    # a reviewer's own proposal (posting again overwrites) replaces the step's for that sample
    api.set_sample_proposed_changes(1, 2, ei.SetSampleProposedChangesRequest(
        jobId=job, proposedChanges=ei.SampleProposedChanges(label="lynx", isDisabled=True)))
    listed = _get(server, f"/api/1/raw-data/ai-actions-preview/{job}/proposed-changes", key).json()
    assert listed["success"] and {(p["sampleId"], p["step"]) for p in listed["proposedChanges"]} == {(1, 1), (2, 1)}
    assert [p["proposedChanges"] for p in listed["proposedChanges"] if p["sampleId"] == 2] == [
        {"label": "lynx", "isDisabled": True}]
    data("proposals", "apply", str(job), "--ids", "2")
    s2 = data.json("samples", "show", "2")
    assert s2["label"] == "lynx" and s2["isDisabled"] is True and s2["boundingBoxes"] == []
    with pytest.raises(ei.exceptions.ApiException) as e:
        api.set_sample_proposed_changes(1, 3, ei.SetSampleProposedChangesRequest(
            jobId=job, proposedChanges=ei.SampleProposedChanges(label="x")))
    assert e.value.status == 400 and "not part of job" in e.value.body
    with pytest.raises(ei.exceptions.NotFoundException):
        api.set_sample_proposed_changes(1, 3, ei.SetSampleProposedChangesRequest(
            jobId=999, proposedChanges=ei.SampleProposedChanges(label="x")))


def test_keys_hashed_listed_revoked(data: Cli, server: BackgroundServer, project: Path) -> None:
    r = data("keys", "create", "--name", "laptop")
    key = r.stdout.strip()
    assert key.startswith("ei_") and len(key) > 40 and "shown only now" in r.stderr
    assert _get(server, "/api/projects", key).json()["success"] is True
    listed = data("keys", "list").output
    assert "laptop" in listed and key[:10] in listed and key not in listed
    for f in (project / ".labelblocks").rglob("*"):
        if f.is_file():
            assert key.encode() not in f.read_bytes(), f
    for bad in (None, "", "ei_wrong", key[:-1], "x" * 500, key + "x"):
        resp = _get(server, "/api/1/raw-data", bad)
        assert resp.status_code == 401 and resp.json() == {"success": False, "error": resp.json()["error"]}
        assert "x-api-key" in resp.json()["error"]
    data("keys", "revoke", "laptop")
    assert _get(server, "/api/projects", key).status_code == 401
    assert "revoked" in data("keys", "list").output
    assert "no API key" in data("keys", "revoke", "nope", expect=1).output
    health = requests.get(server.host + "/healthz", timeout=10)
    assert health.status_code == 200 and health.json()["status"] == "ok"
    assert requests.get(server.host + "/openapi.json", timeout=10).status_code == 401
    active = data.json("keys", "create")["key"]
    spec = requests.get(server.host + "/openapi.json", headers={"x-api-key": active}, timeout=10).json()
    assert "/v1/api/{project_id}/raw-data/{sample_id}/propose-changes" in spec["paths"]
    assert "/api/{category}/files" in spec["paths"]


def _png_bomb(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims width x height pixels."""
    buf = io.BytesIO()
    from PIL import Image

    Image.new("L", (1, 1)).save(buf, format="PNG")
    data = bytearray(buf.getvalue())
    ihdr = data.index(b"IHDR")
    data[ihdr + 4 : ihdr + 12] = struct.pack(">II", width, height)
    data[ihdr + 17 : ihdr + 21] = struct.pack(">I", zlib.crc32(bytes(data[ihdr : ihdr + 17])))
    return bytes(data)


def test_ingestion(data: Cli, server: BackgroundServer, key: str, tmp_path: Path, project: Path) -> None:
    files = [("data", ("dog.1.png", make_image(tmp_path / "a.png", seed=11).read_bytes(), "image/png")),
             ("data", ("dog.2.png", make_image(tmp_path / "b.png", seed=12).read_bytes(), "image/png")),
             ("data", ("broken.png", b"not an image", "image/png"))]
    r = _post(server, "/api/training/files", key, files=files,
              headers={"x-label": "big%20dog", "x-metadata": json.dumps({"site": "Nice", "batch": "7"})})
    assert r.status_code == 200
    out = r.json()
    assert out["success"] is False and out["added"] == 2 and out["rejected"] == 1
    assert [f["success"] for f in out["files"]] == [True, True, False]
    assert "not a readable image" in out["files"][2]["error"]
    nice = data.json("samples", "list", "--where", "site=Nice")
    assert {s["label"] for s in nice} == {"big dog"} and all(s["metadata"]["batch"] == "7" for s in nice)
    # inferred label, no label, duplicates, date ids, categories
    one = [("data", ("cow.9.png", make_image(tmp_path / "c.png", seed=13).read_bytes(), "image/png"))]
    assert _post(server, "/api/testing/files", key, files=one).json()["files"][0]["success"]
    dup = _post(server, "/api/testing/files", key, files=one, headers={"x-disallow-duplicates": "1"}).json()
    assert dup["files"][0]["status"] == "duplicate" and dup["added"] == 0
    nolabel = _post(server, "/api/validation/files", key, files=one, headers={"x-no-label": "1", "x-add-date-id": "1"}).json()
    name = nolabel["files"][0]["fileName"]
    assert name.startswith("cow.9.") and name.endswith(".png") and name != "cow.9.png"
    sample = data.json("samples", "show", str(nolabel["files"][0]["id"]))
    assert sample.get("label") is None and sample["category"] == "validation"
    assert data.json("samples", "list", "--search", "cow.9.png", "--category", "testing")[0]["label"] == "cow"
    # file names cannot escape: folders are dropped, blobs are content-addressed
    evil = _post(server, "/api/split/files", key, files=one, headers={"x-file-name": "..%2F..%2F..%2Fevil.png"}).json()
    assert evil["files"][0]["fileName"] == "evil.png"
    assert not (project.parent / "evil.png").exists() and not list(project.parent.parent.glob("**/evil.png"))
    assert data.json("samples", "show", str(evil["files"][0]["id"]))["category"] in ("training", "testing")


@pytest.mark.parametrize(("path", "kwargs", "status", "message"), [
    ("/api/nope/files", {"files": [("data", ("a.png", b"x", "image/png"))]}, 404, "unknown category"),
    ("/api/training/files", {"data": b"plain body", "headers": {"content-type": "text/plain"}}, 400, "multipart"),
    ("/api/training/files", {"files": [("other", ("a.png", b"x", "image/png"))]}, 400, "field 'data'"),
    ("/api/training/files", {"files": [("data", ("a.png", b"x", "image/png"))], "headers": {"x-metadata": "{bad"}},
     400, "x-metadata"),
    ("/api/training/files", {"files": [("data", ("a.png", b"x", "image/png"))], "headers": {"x-metadata": '{"a": 1}'}},
     400, "x-metadata"),
    ("/api/training/files", {"files": [("data", ("a.png", b"x", "image/png"))] * 2, "headers": {"x-file-name": "b.png"}},
     400, "x-file-name"),
    ("/api/training/files", {"files": [("data", ("big.png", b"0" * (3 * 1024 * 1024), "image/png"))]}, 413, "too large"),
    ("/api/1/raw-data/1/bounding-boxes", {"data": b"{not json", "headers": {"content-type": "application/json"}},
     400, "expected a JSON body"),
    ("/api/1/raw-data/1/bounding-boxes", {"json": {"boundingBoxes": [{"label": "a", "x": -1, "y": 0, "width": 1,
                                                                       "height": 1}]}}, 400, "boundingBoxes[0]"),
    ("/api/1/raw-data/1/bounding-boxes", {"json": {"boundingBoxes": "nope"}}, 400, "expected a list"),
    ("/api/1/raw-data/1/bounding-boxes", {"json": ["a"]}, 400, "expected a JSON object"),
    ("/api/1/raw-data/1/metadata", {"json": {"metadata": {"k": 5}}}, 400, "expected a string value"),
    ("/api/1/raw-data/1/edit-label", {"json": {"label": 5}}, 400, "label: expected a string"),
    ("/api/1/raw-data/1/structured-labels", {"json": {"structuredLabels": [
        {"startIndex": 0, "endIndex": 3, "label": "a"}]}}, 400, "is an image"),
    ("/api/1/raw-data/1/propose-changes", {"json": {"jobId": "1", "proposedChanges": {}}}, 400, "jobId"),
    ("/api/1/raw-data/1/propose-changes", {"json": {"jobId": 1, "proposedChanges": {"label": 3}}}, 400,
     "proposedChanges"),
    ("/api/1/raw-data/99/edit-label", {"json": {"label": "a"}}, 404, "no sample with id 99"),
    ("/api/7/raw-data/1/edit-label", {"json": {"label": "a"}}, 404, "no project 7"),
    ("/api/1/raw-data/1/metadata", {"data": b"{" + b" " * 70_000 + b"}", "headers": {"content-type": "application/json"}},
     413, "too large"),
])
def test_hostile_writes(data: Cli, server: BackgroundServer, key: str, path: str, kwargs: dict, status: int,
                        message: str) -> None:
    before = data.json("samples", "list", "--include-disabled")
    r = _post(server, path, key, **kwargs)
    assert r.status_code == status, r.text
    body = r.json()
    assert body["success"] is False and message in body["error"]
    assert data.json("samples", "list", "--include-disabled") == before  # nothing written


@pytest.mark.parametrize(("query", "message"), [
    ("metadata=%5Bnot", "metadata filter"),
    ("metadata=%5B%7B%22key%22%3A%22a%22%2C%22op%22%3A%22gt%22%7D%5D", "op must be"),
    ("labels=cat", "labels: expected a JSON list"),
    ("category=post", "category"),
    ("includeDisabled=maybe", "includeDisabled"),
    ("limit=abc", "limit"),
    ("sortBy=name", "sortBy"),
])
def test_hostile_queries(server: BackgroundServer, key: str, query: str, message: str) -> None:
    r = _get(server, f"/api/1/raw-data?{query}", key)
    assert r.status_code == 400 and message in r.json()["error"]


def test_bomb_and_chunked_oversize_are_refused(data: Cli, server: BackgroundServer, key: str) -> None:
    for side in (15000, 30000):  # past the limit, and past Pillow's own bomb guard
        bomb = _png_bomb(side, side)
        assert len(bomb) < 200
        r = _post(server, "/api/training/files", key, files=[("data", ("bomb.png", bomb, "image/png"))]).json()
        assert r["files"][0]["success"] is False and "image too large" in r["files"][0]["error"]

    def chunks() -> Iterator[bytes]:  # no Content-Length: the server counts what arrives
        yield b'--x\r\nContent-Disposition: form-data; name="data"; filename="a.png"\r\nContent-Type: image/png\r\n\r\n'
        for _ in range(40):
            yield b"0" * 100_000

    r2 = requests.post(server.host + "/api/training/files", data=chunks(), timeout=30,
                       headers={"x-api-key": key, "content-type": "multipart/form-data; boundary=x"})
    assert r2.status_code == 413 and r2.json()["success"] is False
    assert len(data.json("samples", "list")) == 5


def test_job_key_is_limited_to_its_step(data: Cli, server: BackgroundServer) -> None:
    data("actions", "create", "boxes", "--step", "fake-boxer")
    job = data.json("actions", "preview", "boxes", "--ids", "1")["jobId"]
    jkey = server.state.add_job_key(JobScope(job_id=job, step=2, sample_ids=frozenset({1})))
    # reads see the earlier step's proposal; a direct write becomes this step's proposal
    assert len(_get(server, "/api/1/raw-data/1", jkey, params={"proposedActionsJobId": job}).json()["sample"]["boundingBoxes"]) == 1
    assert _post(server, "/api/1/raw-data/1/edit-label", jkey, json={"label": "staged"}).status_code == 200
    assert data.json("samples", "show", "1")["label"] == "cat"
    changes = {(p["sampleId"], p["step"]): p["proposedChanges"]
               for p in data.json("proposals", "show", str(job))["proposedChanges"]}
    assert changes[(1, 2)] == {"label": "staged"}
    # two metadata writes of one step add up (the protocol's metadata endpoint adds or updates keys)
    assert _post(server, "/api/1/raw-data/1/metadata", jkey, json={"metadata": {"a": "1"}}).status_code == 200
    assert _post(server, "/api/1/raw-data/1/metadata", jkey, json={"metadata": {"b": "2"}}).status_code == 200
    step2 = {p["sampleId"]: p["proposedChanges"] for p in data.json("proposals", "show", str(job))["proposedChanges"]
             if p["step"] == 2}
    assert step2[1] == {"label": "staged", "metadata": {"site": "Paris", "labeled_by": "fake-boxer", "a": "1", "b": "2"}}
    denied = _post(server, "/api/1/raw-data/2/edit-label", jkey, json={"label": "x"})
    assert denied.status_code == 403 and "not part of job" in denied.json()["error"]
    other = _post(server, "/api/1/raw-data/1/propose-changes", jkey, json={"jobId": job + 1, "proposedChanges": {}})
    assert other.status_code == 403
    # published blocks page category=training then testing: a job's validation samples are found
    server.state.store.set_categories({1: "validation"})
    listed = _get(server, "/api/1/raw-data", jkey, params={"category": "training", "labels": "", "limit": 1000}).json()
    assert 1 in {s["id"] for s in listed["samples"]}
    key = data.json("keys", "create")["key"]
    assert 1 not in {s["id"] for s in _get(server, "/api/1/raw-data", key, params={"category": "training"}).json()["samples"]}
    upload = _post(server, "/api/training/files", jkey, files=[("data", ("a.png", b"x", "image/png"))])
    assert upload.status_code == 403 and "cannot upload" in upload.json()["error"]
    server.state.remove_job_key(jkey)
    assert _get(server, "/api/1/raw-data/1", jkey).status_code == 401


def test_serve_command(data: Cli, project: Path, tmp_path: Path) -> None:
    from labelblocks.project import init_project

    bare = init_project(tmp_path / "bare")  # no key yet: serve says how to make one
    proc = subprocess.Popen([sys.executable, "-m", "labelblocks", "--project", str(bare), "serve", "--port",
                             str(free_port())], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None
        lines = [proc.stderr.readline() for _ in range(2)]
        assert "no active API key" in "".join(lines) and "labelblocks keys create" in "".join(lines)
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    key = data.json("keys", "create")["key"]
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "labelblocks", "--project", str(project), "serve", "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 30
        while True:
            try:
                r = requests.get(f"http://127.0.0.1:{port}/v1/api/1/raw-data", headers={"x-api-key": key}, timeout=5)
                break
            except requests.ConnectionError:
                assert time.time() < deadline and proc.poll() is None
                time.sleep(0.2)
        assert r.json()["totalCount"] == 5
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_data_management_routes_through_the_bindings(data: Cli, api: ei.RawDataApi, server: BackgroundServer) -> None:
    """Counting, every sample's metadata, deleting, renaming and moving, as the protocol's
    own client calls them."""
    paris = json.dumps([{"key": "site", "op": "eq", "values": ["Paris"]}])
    assert api.count_samples(1, "all").count == 5
    assert api.count_samples(1, "all", metadata=paris).count == 3
    assert api.count_samples(1, "training", data_type="audio").count == 1
    md = {m.id: m.metadata for m in api.get_sample_metadata(1, "all").metadata}
    assert md == {1: {"site": "Paris"}, 2: {"site": "Paris"}, 3: {"site": "Lyon"}, 4: {"site": "Lyon"},
                  5: {"site": "Paris", "device": "mic"}}
    api.rename_sample(1, 2, ei.RenameSampleRequest(name="renamed.png"))
    api.move_sample(1, 3, ei.MoveRawDataRequest(newCategory="testing"))
    api.delete_sample(1, 4)
    samples = {s["id"]: s for s in data.json("samples", "list")}
    assert sorted(samples) == [1, 2, 3, 5]
    assert samples[2]["filename"] == "renamed.png" and samples[3]["category"] == "testing"
    for call, status in ((lambda: api.delete_sample(1, 99), 404),
                         (lambda: api.rename_sample(1, 1, ei.RenameSampleRequest(name="")), 400)):
        with pytest.raises(ei.exceptions.ApiException) as e:
            call()
        assert e.value.status == status
    r = _post(server, "/api/1/raw-data/1/move", api.api_client.configuration.api_key["ApiKeyAuthentication"],
              json={"newCategory": "attic"})
    assert r.status_code == 400 and "newCategory: expected one of" in r.json()["error"]
    # a job's key counts its own samples and may not delete, rename or move
    job_key = server.state.add_job_key(JobScope(job_id=1, step=1, sample_ids=frozenset({1, 2}), revisions={}))
    assert _get(server, "/api/1/raw-data/count", job_key).json()["count"] == 2
    r = requests.delete(server.url + "/api/1/raw-data/1", headers={"x-api-key": job_key}, timeout=30)
    assert r.status_code == 403 and "job's key cannot delete" in r.json()["error"]


def test_batch_routes_through_the_bindings(data: Cli, api: ei.RawDataApi, server: BackgroundServer, key: str) -> None:
    """The batch writes take the listing's filters (metadata filter, ids, excludeIds) and
    write all of their samples in one transaction."""
    paris = json.dumps([{"key": "site", "op": "eq", "values": ["Paris"]}])
    api.batch_add_metadata(1, "all", ei.BatchAddMetadataRequest(metadataKey="reviewed", metadataValue="no"),
                           metadata=paris)
    api.batch_edit_labels(1, "training", ei.EditSampleLabelRequest(label="animal"), data_type="image",
                          exclude_ids=json.dumps([2]))
    api.batch_move(1, "all", ei.MoveRawDataRequest(newCategory="testing"), ids=json.dumps([3, 4]))
    api.batch_disable(1, "testing")
    api.batch_clear_metadata_by_key(1, "all", ei.BatchClearMetadataByKeyRequest(metadataKey="device"))
    samples = {s["id"]: s for s in data.json("samples", "list", "--include-disabled")}
    assert {i for i, s in samples.items() if s["metadata"].get("reviewed") == "no"} == {1, 2, 5}
    assert {i: s.get("label") for i, s in samples.items()} == {1: "animal", 2: "cat", 3: "animal", 4: "animal",
                                                                5: "dog"}
    assert {i for i, s in samples.items() if s["category"] == "testing"} == {3, 4}
    assert {i for i, s in samples.items() if s["isDisabled"]} == {3, 4}
    assert "device" not in samples[5]["metadata"]
    api.batch_enable(1, "all")
    api.batch_clear_metadata(1, "all", ids=json.dumps([1]))
    api.batch_delete(1, "all", metadata=json.dumps([{"key": "site", "op": "eq", "values": ["Lyon"]}]))
    samples = {s["id"]: s for s in data.json("samples", "list", "--include-disabled")}
    assert sorted(samples) == [1, 2, 5] and samples[1]["metadata"] == {} and not any(
        s["isDisabled"] for s in samples.values())
    r = _post(server, "/api/1/raw-data/batch/delete?ids=[1,99]", key)  # ids filter: 99 matches nothing
    assert r.json() == {"success": True, "samples": 1} and [s["id"] for s in data.json("samples", "list")] == [2, 5]
    r = _post(server, "/api/1/raw-data/batch/add-metadata?ids=oops", key, json={"metadataKey": "a", "metadataValue": "b"})
    assert r.status_code == 400 and "ids" in r.json()["error"]
    for query in ("ids=[99999999999999999999999]", "excludeIds=[-1]", "minId=99999999999999999999999", "maxId=x"):
        r = _post(server, f"/api/1/raw-data/batch/delete?{query}", key)
        assert r.status_code == 400 and r.json()["success"] is False, (query, r.text)
    job_key = server.state.add_job_key(JobScope(job_id=1, step=1, sample_ids=frozenset({1}), revisions={}))
    assert _post(server, "/api/1/raw-data/batch/delete", job_key).status_code == 403


def test_ratio_filter_options_and_delete_all_through_the_bindings(data: Cli, api: ei.RawDataApi) -> None:
    data("metadata", "set", "--ids", "1", "device=cam")
    assert api.get_dataset_ratio(1).ratio.to_dict() == {"training": 5, "validation": 0, "testing": 0}
    options = api.get_sample_metadata_filter_options(1, "all")
    assert (options.total_count, [(o.key, o.options) for o in options.options_list]) == (
        2, [("device", ["cam", "mic"]), ("site", ["Lyon", "Paris"])])
    assert [o.key for o in api.get_sample_metadata_filter_options(1, "all", limit=1, offset=1).options_list] == ["site"]
    api.batch_move(1, "all", ei.MoveRawDataRequest(newCategory="testing"), ids=json.dumps([1, 2]))
    api.delete_all_samples_by_category(1, "testing")
    assert sorted(s["id"] for s in data.json("samples", "list")) == [3, 4, 5]
    api.delete_all_samples(1)
    assert data.json("samples", "list") == []
