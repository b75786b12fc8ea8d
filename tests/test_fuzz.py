"""Generated hostile requests against a real server on loopback: any JSON, any header bytes,
any integers, any path segments, multipart bodies with any file name. Whatever arrives, the
answer is never a 5xx, an error is always the protocol's JSON shape, a refused request writes
nothing, and the database stays whole. Bounded (examples and seconds) so it runs in CI."""

from __future__ import annotations

import hashlib
import io
import json
import sqlite3
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from labelblocks.project import DATA_DIR, init_project, open_store
from labelblocks.server import BackgroundServer, JobScope
from labelblocks.store.keys import create_key
from labelblocks.uploads import UploadItem, upload

from .conftest import make_audio


class Target:
    def __init__(self, project: Path, server: BackgroundServer, key: str, job_key: str) -> None:
        self.project = project
        self.server = server
        self.key = key
        self.job_key = job_key
        self.db = sqlite3.connect(project / DATA_DIR / "project.db")

    def state(self) -> str:
        """A digest of everything a request could write."""
        h = hashlib.sha256()
        for table, order in (("samples", "id"), ("sample_metadata", "sample_id, key"),
                             ("proposals", "job_id, sample_id, step"), ("jobs", "id")):
            for row in self.db.execute(f"SELECT * FROM {table} ORDER BY {order}"):
                h.update(repr(row).encode())
        return h.hexdigest()


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    root = tmp_path_factory.mktemp("fuzz")
    project = init_project(root / "proj")
    store = open_store(project)
    items = []
    for i in range(4):
        buf = io.BytesIO()
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (24, 32, 3), dtype=np.uint8)).save(buf, "PNG")
        items.append(UploadItem(source=str(i), name=f"cat.{i}.png", data=buf.getvalue(), metadata={"site": "Paris"}))
    wav = make_audio(root / "dog.wav", seconds=0.2, rate=8000)
    items.append(UploadItem(source="wav", name="dog.wav", data=wav.read_bytes()))
    upload(store, items, workers=1)
    _, key = create_key(store, "fuzz")
    with BackgroundServer(project, store=store) as server:
        job_key = server.state.add_job_key(JobScope(job_id=1, step=1, sample_ids=frozenset({1, 2})))
        t = Target(project, server, key, job_key)
        yield t
        t.db.close()
    store.close()


# --- what a hostile client sends ---------------------------------------------------------------------

INTS = st.one_of(st.integers(-3, 10), st.integers(min_value=-(2**70), max_value=2**70),
                 st.sampled_from([2**31, 2**63 - 1, 2**63, 2**64, -(2**63) - 1]))
TEXT = st.text(max_size=40)
SEGMENT = st.one_of(INTS.map(str), TEXT, st.sampled_from(["..", ".", "%00", "%ff", "1e9", "0x10", " 1", "1.5"]))
JSON = st.recursive(st.none() | st.booleans() | INTS | st.floats(allow_nan=False) | TEXT,
                    lambda children: st.lists(children, max_size=4) | st.dictionaries(TEXT, children, max_size=4),
                    max_leaves=12)
HEADER_BYTES = st.binary(max_size=60).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b"").replace(b"\0", b""))

ROUTES = [
    ("GET", "/v1/api/{p}/raw-data"), ("GET", "/v1/api/{p}/raw-data/{s}"), ("GET", "/v1/api/{p}/raw-data/{s}/image"),
    ("GET", "/v1/api/{p}/raw-data/{s}/wav"), ("GET", "/v1/api/{p}/raw-data/{s}/raw"),
    ("GET", "/v1/api/{p}/raw-data/{s}/original"),
    ("GET", "/v1/api/{p}/raw-data/ai-actions-preview/{s}/proposed-changes"), ("GET", "/v1/api/projects"),
    ("POST", "/v1/api/{p}/raw-data/{s}/bounding-boxes"), ("POST", "/v1/api/{p}/raw-data/{s}/structured-labels"),
    ("POST", "/v1/api/{p}/raw-data/{s}/edit-label"), ("POST", "/v1/api/{p}/raw-data/{s}/metadata"),
    ("POST", "/v1/api/{p}/raw-data/{s}/disable"), ("POST", "/v1/api/{p}/raw-data/{s}/enable"),
    ("POST", "/v1/api/{p}/raw-data/{s}/propose-changes"), ("POST", "/api/{c}/files"),
    ("GET", "/{x}"), ("DELETE", "/v1/api/{p}/raw-data/{s}"),
]
QUERY_NAMES = ["limit", "offset", "minId", "maxId", "proposedActionsJobId", "limitPayloadValues", "category",
               "labels", "metadata", "filename", "search", "includeDisabled", "sortBy", "dataType", "sliceStart",
               "sliceEnd", "axisIx"]
FIELDS = ["label", "metadata", "boundingBoxes", "structuredLabels", "jobId", "proposedChanges"]


@st.composite
def hostile_request(draw: st.DrawFn) -> dict[str, Any]:
    method, template = draw(st.sampled_from(ROUTES))
    seg = lambda: urllib.parse.quote(draw(SEGMENT), safe="")  # noqa: E731
    path = template.format(p=draw(st.sampled_from(["1", "1", seg()])), s=draw(st.sampled_from(["1", "2", "5", seg()])),
                           c=draw(st.sampled_from(["training", "split", seg()])), x=seg())
    names = draw(st.lists(st.sampled_from(QUERY_NAMES) | TEXT, max_size=4))
    params = {n: draw(st.one_of(INTS.map(str), TEXT, JSON.map(json.dumps))) for n in names}
    headers: dict[str, Any] = {}
    for name in draw(st.lists(st.sampled_from(["x-metadata", "x-label", "x-file-name", "x-no-label",
                                               "x-add-date-id", "x-disallow-duplicates", "content-type"]),
                              max_size=3, unique=True)):
        headers[name] = draw(st.one_of(HEADER_BYTES, JSON.map(lambda v: json.dumps(v, ensure_ascii=False).encode(
            "utf-8", "surrogatepass"))))
    who = draw(st.sampled_from(["key", "key", "key", "job", "none", "junk"]))
    kind = draw(st.sampled_from(["json", "json-fields", "bytes", "multipart", "none"]))
    body: dict[str, Any] = {}
    if kind == "json":
        body["data"] = json.dumps(draw(JSON)).encode()
    elif kind == "json-fields":
        body["data"] = json.dumps({f: draw(JSON) for f in draw(st.lists(st.sampled_from(FIELDS), max_size=3))}).encode()
    elif kind == "bytes":
        body["data"] = draw(st.binary(max_size=200))
    elif kind == "multipart":
        name = draw(st.one_of(TEXT, st.sampled_from(["a.png", "../../x.png", "x" * 300 + ".png", "a.wav"])))
        content = draw(st.one_of(st.binary(max_size=100), st.just(_tiny_png())))
        body["files"] = [(draw(st.sampled_from(["data", "other"])), (name, content, "image/png"))]
    return {"method": method, "path": path, "params": params, "headers": headers, "who": who, **body}


def _tiny_png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (3, 2), (9, 9, 9)).save(buf, "PNG")
    return buf.getvalue()


# --- the property ---------------------------------------------------------------------------------------


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                  HealthCheck.too_slow, HealthCheck.data_too_large])
@given(req=hostile_request())
def test_hostile_requests_never_reach_a_5xx(target: Target, req: dict[str, Any]) -> None:
    headers = dict(req["headers"])
    if req["who"] == "key":
        headers["x-api-key"] = target.key
    elif req["who"] == "job":
        headers["x-api-key"] = target.job_key
    elif req["who"] == "junk":
        headers["x-api-key"] = "ei_" + "0" * 64
    before = target.state()
    try:
        r = requests.request(req["method"], target.server.host + req["path"], params=req["params"], headers=headers,
                             data=req.get("data"), files=req.get("files"), timeout=30)
    except (requests.exceptions.InvalidHeader, requests.exceptions.InvalidURL, UnicodeError, ValueError):
        return  # the client library refused to send it: nothing reached the server
    assert r.status_code < 500, (r.status_code, r.text[:500], req)
    if r.status_code >= 400:
        assert r.headers.get("content-type", "").startswith("application/json"), (r.status_code, r.text[:200], req)
        body = r.json()
        assert body["success"] is False and isinstance(body["error"], str) and body["error"], body
        assert target.state() == before, req  # a refused request wrote nothing
    assert target.db.execute("PRAGMA quick_check").fetchone()[0] == "ok"


def test_the_database_is_whole_after_the_fuzzing(target: Target) -> None:
    assert target.db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert target.db.execute("PRAGMA foreign_key_check").fetchall() == []
