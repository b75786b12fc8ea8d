"""What an attacker and a careless block author found (issue: hardening), each against a real
server on loopback or the real CLI: job keys read only their job, no hostile input reaches a
500 or a traceback, a full disk stores nothing, headers are UTF-8, names are bounded, images
are verified to the end, keys record their use, blobs are durable and never orphaned."""

from __future__ import annotations

import errno
import io
import json
import os
import sqlite3
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
import soundfile as sf
from PIL import Image

from labelblocks.project import DATA_DIR
from labelblocks.server import BackgroundServer, JobScope
from labelblocks.store import Store
from labelblocks.store.blobs import BlobStore

from .conftest import Cli, blob_files, make_audio, make_image, project_sql
from .services import free_port

# --- fixtures -------------------------------------------------------------------------------------


@pytest.fixture
def data(cli: Cli, tmp_path: Path) -> Cli:
    for i in range(4):
        make_image(tmp_path / "imgs" / f"cat.{i}.png", size=(40, 30), seed=i)
    cli("upload", str(tmp_path / "imgs"), "--metadata", "site=Paris")
    make_audio(tmp_path / "aud" / "dog.wav", seconds=0.5, rate=8000)
    cli("upload", str(tmp_path / "aud" / "dog.wav"))
    return cli


@pytest.fixture
def server(data: Cli, project: Path, store: Store) -> Iterator[BackgroundServer]:
    with BackgroundServer(project, store=store) as srv:
        yield srv


@pytest.fixture
def key(data: Cli) -> str:
    return str(data.json("keys", "create", "--name", "tests")["key"])


def _get(server: BackgroundServer, path: str, key: str | None, **kw: Any) -> requests.Response:
    return requests.get(server.url + path, headers={"x-api-key": key or ""}, timeout=60, **kw)


def _post(server: BackgroundServer, path: str, key: str | None, headers: dict[str, Any] | None = None,
          **kw: Any) -> requests.Response:
    base = server.host if path.endswith("/files") else server.url
    return requests.post(base + path, headers={"x-api-key": key or "", **(headers or {})}, timeout=60, **kw)


def _db_state(project: Path) -> tuple[Any, ...]:
    """Everything a write could change, read with the test's own queries."""
    with project_sql(project) as db:
        return (db.execute("SELECT * FROM samples ORDER BY id").fetchall(),
                db.execute("SELECT * FROM sample_metadata ORDER BY sample_id, key").fetchall(),
                db.execute("SELECT * FROM proposals ORDER BY job_id, sample_id, step").fetchall())


def _png(seed: int = 0, size: tuple[int, int] = (32, 24)) -> bytes:
    buf = io.BytesIO()
    arr = np.random.default_rng(seed).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(arr).save(buf, "PNG")
    return buf.getvalue()


# --- item 3: a job key reads its job only ---------------------------------------------------------


def test_job_key_reads_only_its_jobs_samples_and_proposals(data: Cli, server: BackgroundServer) -> None:
    data("actions", "create", "boxes", "--step", "fake-boxer")
    job = data.json("actions", "preview", "boxes", "--ids", "1,2")["jobId"]
    other = data.json("actions", "preview", "boxes", "--ids", "3")["jobId"]
    jkey = server.state.add_job_key(JobScope(job_id=job, step=1, sample_ids=frozenset({1, 2})))
    listed = _get(server, "/api/1/raw-data", jkey, params={"limit": 100}).json()
    assert sorted(s["id"] for s in listed["samples"]) == [1, 2] and listed["totalCount"] == 2
    assert _get(server, "/api/1/raw-data", jkey, params={"category": "training", "limit": 100}).json()["totalCount"] == 2
    assert _get(server, "/api/1/raw-data/2", jkey).json()["sample"]["id"] == 2
    assert _get(server, "/api/1/raw-data/1/image", jkey).status_code == 200
    for path in ("/api/1/raw-data/3", "/api/1/raw-data/3/image", "/api/1/raw-data/3/raw", "/api/1/raw-data/5/wav",
                 "/api/1/raw-data/5"):
        r = _get(server, path, jkey)
        assert r.status_code == 403 and "not part of job" in r.json()["error"], path
    # proposals: its own job's, never another's (listed or overlaid)
    assert _get(server, f"/api/1/raw-data/ai-actions-preview/{job}/proposed-changes", jkey).status_code == 200
    for path, params in ((f"/api/1/raw-data/ai-actions-preview/{other}/proposed-changes", {}),
                         ("/api/1/raw-data", {"proposedActionsJobId": other}),
                         ("/api/1/raw-data/1", {"proposedActionsJobId": other})):
        r = _get(server, path, jkey, params=params)
        assert r.status_code == 403 and f"belongs to job {job}" in r.json()["error"], path
    # a project key still reads everything
    pkey = data.json("keys", "create")["key"]
    assert _get(server, "/api/1/raw-data", pkey, params={"limit": 100}).json()["totalCount"] == 5
    assert _get(server, f"/api/1/raw-data/ai-actions-preview/{other}/proposed-changes", pkey).status_code == 200


def test_job_key_over_many_samples_lists_them(data: Cli, server: BackgroundServer, store: Store) -> None:
    """A job of more samples than SQLite binds parameters (32,766) still lists its own."""
    ids = frozenset(range(1, 40_001))  # ids beyond the project's are simply absent
    jkey = server.state.add_job_key(JobScope(job_id=1, step=1, sample_ids=ids))
    assert _get(server, "/api/1/raw-data", jkey, params={"limit": 10}).json()["totalCount"] == 5


# --- item 5: hostile input is a 4xx in the JSON shape, nothing stored -----------------------------

BIG = str(2**63)
HUGE = str(2**64)


@pytest.mark.parametrize(("method", "path", "params", "body"), [
    ("GET", f"/api/1/raw-data/{HUGE}", {}, None),
    ("GET", f"/api/1/raw-data/{BIG}/image", {}, None),
    ("GET", f"/api/1/raw-data/{BIG}/wav", {}, None),
    ("GET", f"/api/1/raw-data/{BIG}/raw", {}, None),
    ("GET", "/api/1/raw-data", {"minId": HUGE}, None),
    ("GET", "/api/1/raw-data", {"maxId": BIG}, None),
    ("GET", "/api/1/raw-data", {"offset": BIG}, None),
    ("GET", "/api/1/raw-data", {"limit": HUGE}, None),
    ("GET", "/api/1/raw-data", {"proposedActionsJobId": BIG}, None),
    ("GET", "/api/1/raw-data/5", {"limitPayloadValues": HUGE}, None),
    ("GET", "/api/1/raw-data/5/wav", {"sliceStart": BIG}, None),
    ("GET", f"/api/1/raw-data/ai-actions-preview/{BIG}/proposed-changes", {}, None),
    ("POST", f"/api/1/raw-data/{BIG}/edit-label", {}, b'{"label": "x"}'),
    ("POST", f"/api/1/raw-data/{BIG}/disable", {}, None),
    ("POST", "/api/1/raw-data/1/propose-changes", {}, b'{"jobId": ' + BIG.encode() + b', "proposedChanges": {}}'),
    ("POST", "/api/1/raw-data/1/bounding-boxes", {},
     b'{"boundingBoxes": [{"label": "a", "x": ' + HUGE.encode() + b', "y": 0, "width": 1, "height": 1}]}'),
    # lone surrogates: in metadata keys and values, labels, boxes, proposed changes
    ("POST", "/api/1/raw-data/1/metadata", {}, b'{"metadata": {"\\ud800": "x"}}'),
    ("POST", "/api/1/raw-data/1/metadata", {}, b'{"metadata": {"k": "a\\udfff"}}'),
    ("POST", "/api/1/raw-data/1/edit-label", {}, b'{"label": "\\ud800"}'),
    ("POST", "/api/1/raw-data/1/bounding-boxes", {},
     b'{"boundingBoxes": [{"label": "\\udc00", "x": 0, "y": 0, "width": 1, "height": 1}]}'),
    ("POST", "/api/1/raw-data/1/propose-changes", {}, b'{"jobId": 1, "proposedChanges": {"label": "\\ud83d"}}'),
    ("GET", "/api/1/raw-data", {"metadata": '[{"key": "\\ud800", "op": "eq", "values": []}]'}, None),
    ("GET", "/api/1/raw-data", {"labels": '["\\ud800"]'}, None),
    # JSON nested 100,000 deep
    ("POST", "/api/1/raw-data/1/edit-label", {}, b"[" * 100_000 + b"]" * 100_000),
    ("POST", "/api/1/raw-data/1/metadata", {}, b'{"metadata": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"),
    # (a URL holds 64 KB: past that the HTTP parser refuses the request line itself)
    ("GET", "/api/1/raw-data", {"metadata": "[" * 5_000 + "]" * 5_000}, None),
])
def test_hostile_input_is_a_clean_4xx(data: Cli, server: BackgroundServer, key: str, project: Path, method: str,
                                      path: str, params: dict[str, str], body: bytes | None) -> None:
    data("actions", "create", "boxes", "--step", "fake-boxer")
    data.json("actions", "preview", "boxes", "--ids", "1")  # job 1, so that proposals exist to change
    before = _db_state(project)
    r = requests.request(method, server.url + path, params=params, data=body, timeout=60,
                         headers={"x-api-key": key, "content-type": "application/json"})
    assert 400 <= r.status_code < 500, (r.status_code, r.text[:300])
    assert r.headers["content-type"].startswith("application/json")
    out = r.json()
    assert out["success"] is False and out["error"], out
    assert _db_state(project) == before


def test_surrogates_and_deep_json_in_files_and_arguments_are_one_line(data: Cli, tmp_path: Path) -> None:
    img = make_image(tmp_path / "x" / "a.png", seed=9)
    info = tmp_path / "x" / "info.labels"
    info.write_text('{"version": 1, "files": [{"path": "a.png", "metadata": {"k": "\\ud800"}, '
                    '"label": {"type": "label", "label": "a"}}]}')
    r = data("upload", "--info-file", str(info), expect=1)
    assert "lone surrogate" in r.output and "Traceback" not in r.output
    info.write_text("[" * 100_000 + "]" * 100_000)
    r = data("upload", "--info-file", str(info), expect=1)
    assert "nested too deeply" in r.output and "Traceback" not in r.output
    r = data("metadata", "set", "site=\udcff", "--ids", "1", expect=1)  # argv bytes that are not UTF-8
    assert "lone surrogate" in r.output and r.output.count("\n") == 1
    r = data("upload", str(img), "--metadata", "k=\udcfe", expect=1)
    assert "lone surrogate" in r.output
    assert len(data.json("samples", "list")) == 5


def _fill_database(monkeypatch: pytest.MonkeyPatch, store: Store) -> None:
    """SQLite's own SQLITE_FULL: the database may not grow past the pages it has (as on a full
    disk), on ``store``'s connections and on every store opened from now on."""
    from sqlalchemy import event

    from labelblocks.store import database as store_module

    original = store_module._set_sqlite_pragmas

    def pragmas(conn: Any, record: Any) -> None:
        original(conn, record)
        _cap(conn)

    monkeypatch.setattr(store_module, "_set_sqlite_pragmas", pragmas)
    event.listen(store.engine, "connect", lambda conn, record: _cap(conn))
    store.engine.dispose()


def _cap(conn: Any) -> None:
    cur = conn.cursor()
    cur.execute(f"PRAGMA max_page_count = {cur.execute('PRAGMA page_count').fetchone()[0]}")
    cur.close()


def _no_space(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every blob write fails as on a full disk (ENOSPC), after creating its temporary file."""
    original = BlobStore.put

    def put(self: BlobStore, content_hash: str, data: bytes) -> Path:
        if self.path(content_hash).exists():
            return original(self, content_hash, data)
        tmp = self.path(content_hash).parent / ".tmp-full"
        tmp.write_bytes(data[:10])
        tmp.unlink()
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp))

    monkeypatch.setattr(BlobStore, "put", put)


def test_full_disk_is_507_and_stores_nothing(data: Cli, server: BackgroundServer, key: str, project: Path,
                                             store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    blobs_before = sorted(p.name for p in blob_files(project))
    before = _db_state(project)
    files = [("data", (f"dog.{i}.png", _png(100 + i), "image/png")) for i in range(30)]
    _no_space(monkeypatch)
    r = _post(server, "/api/training/files", key, files=files)
    assert r.status_code == 507 and r.json() == {"success": False, "error": r.json()["error"]}
    assert "disk is full" in r.json()["error"]
    monkeypatch.undo()
    _fill_database(monkeypatch, store)
    r = _post(server, "/api/training/files", key, files=files, headers={"x-metadata": json.dumps({"notes": "z" * 40_000})})
    assert r.status_code == 507 and "disk is full" in r.json()["error"], r.text
    r = _post(server, "/api/1/raw-data/1/metadata", key, json={"metadata": {"notes": "x" * 200_000}})
    assert r.status_code == 507 and "disk is full" in r.json()["error"], r.text
    assert _db_state(project) == before
    assert sorted(p.name for p in blob_files(project)) == blobs_before  # no blob left behind either
    # the CLI says the same, in one line
    out = data("metadata", "set", f"notes={'y' * 200_000}", "--ids", "1", expect=1).output
    assert out.startswith("Error: the disk is full") and out.count("\n") == 1
    out = data("upload", *[str(make_image(project.parent / "more" / f"c.{i}.png", seed=50 + i)) for i in range(20)],
               "--metadata", f"notes={'w' * 40_000}", expect=1).output
    assert "the disk is full" in out and "Traceback" not in out
    assert _db_state(project) == before and sorted(p.name for p in blob_files(project)) == blobs_before


# --- item 6: headers are UTF-8 ----------------------------------------------------------------------


def test_utf8_headers_round_trip(data: Cli, server: BackgroundServer, key: str) -> None:
    md = json.dumps({"site": "Zürich", "city": "東京"}, ensure_ascii=False).encode("utf-8")
    r = _post(server, "/api/training/files", key, files=[("data", ("a.png", _png(1), "image/png"))],
              headers={"x-metadata": md, "x-label": "Zürich".encode(), "x-file-name": "café.png".encode()}).json()
    s = data.json("samples", "show", str(r["files"][0]["id"]))
    assert s["metadata"] == {"site": "Zürich", "city": "東京"} and s["label"] == "Zürich"
    assert s["filename"] == "café.png" and r["files"][0]["fileName"] == "café.png"
    # bytes that are not UTF-8 are read as Latin-1 (what an old client sends for "Zürich")
    r = _post(server, "/api/training/files", key, files=[("data", ("b.png", _png(2), "image/png"))],
              headers={"x-metadata": b'{"site": "Z\xfcrich"}'}).json()
    assert data.json("samples", "show", str(r["files"][0]["id"]))["metadata"] == {"site": "Zürich"}
    assert data.json("samples", "list", "--where", "site=Zürich").__len__() == 2


# --- items 7 and 11: names --------------------------------------------------------------------------


def test_file_names_are_bounded_and_the_reason_is_said(data: Cli, server: BackgroundServer, key: str,
                                                       tmp_path: Path) -> None:
    r = _post(server, "/api/training/files", key, files=[("data", ("x" * 300 + ".png", _png(3), "image/png"))]).json()
    assert r["rejected"] == 1 and "file name too long" in r["files"][0]["error"] and "255" in r["files"][0]["error"]
    r2 = _post(server, "/api/training/files", key, files=[("data", ("x" * 10_000 + ".png", _png(3), "image/png"))])
    assert r2.status_code == 400 and "file name that long" in r2.json()["error"] and "255 bytes" in r2.json()["error"]
    assert "Invalid multipart data" not in r2.json()["error"]
    r3 = _post(server, "/api/training/files", key, files=[("data", ("a.png", _png(3), "image/png"))],
               headers={"x-file-name": "é" * 200 + ".png"}).json()
    assert r3["rejected"] == 1 and "file name too long" in r3["files"][0]["error"]
    long_path = tmp_path / "long"
    long_path.mkdir()
    info = long_path / "info.labels"
    make_image(long_path / "a.png", seed=4)
    info.write_text(json.dumps({"version": 1, "files": [{"path": "a.png", "name": "n" * 260 + ".png"}]}))
    out = data("upload", "--info-file", str(info), expect=1).output
    assert "file name too long" in out
    assert len(data.json("samples", "list")) == 5


def test_export_is_atomic_and_safe_for_any_stored_name(data: Cli, store: Store, project: Path, tmp_path: Path) -> None:
    from labelblocks.store import NewSample

    # names a project of an older version could hold: too long for a file system, dots, controls
    blob = _png(7)
    import hashlib

    h = hashlib.sha256(blob).hexdigest()
    store.blobs.put(h, blob)
    for name in ("y" * 400 + ".png", "..", "a\x01b.png", "é" * 150 + ".png"):
        store.add_samples([NewSample(filename=name, category="training", content_hash=h, media_type="image/png",
                                     ext=".png", width=32, height=24)])
    out = tmp_path / "export"
    n = data.json("export", str(out))["exported"]
    assert n == 9
    doc = json.loads((out / "info.labels").read_text())
    assert len(doc["files"]) == 9 and all((out / f["path"]).is_file() for f in doc["files"])
    assert {f["name"] for f in doc["files"]} >= {"y" * 400 + ".png", ".."}
    # the exported info.labels has the exported files' permissions
    assert (out / "info.labels").stat().st_mode & 0o777 == (out / doc["files"][0]["path"]).stat().st_mode & 0o777
    # it reads back into the same samples
    # a missing stored file: the export fails with the reason and leaves nothing behind
    blob_files(project)[0].unlink()
    out2 = tmp_path / "export2"
    r = data("export", str(out2), expect=1)
    assert "stored file is missing" in r.output and "Traceback" not in r.output
    assert not out2.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".export2")]


# --- items 8 and 9: images verified to the end, one pixel limit ------------------------------------


def _damaged_pngs() -> dict[str, bytes]:
    png = _png(11, size=(64, 64))
    idat = png.index(b"IDAT")
    length = struct.unpack(">I", png[idat - 4 : idat])[0]
    crc = bytearray(png)
    crc[idat + 4 + length] ^= 0xFF
    return {"IEND missing": png[: png.rindex(b"IEND") - 4], "tail cut": png[: len(png) * 2 // 3],
            "IDAT CRC flipped": bytes(crc)}


@pytest.mark.parametrize("damage", ["IEND missing", "tail cut", "IDAT CRC flipped"])
def test_damaged_pngs_are_refused_saying_which_check(data: Cli, tmp_path: Path, damage: str) -> None:
    path = tmp_path / "bad" / "dog.png"
    path.parent.mkdir()
    path.write_bytes(_damaged_pngs()[damage])
    out = data.json("upload", str(path), expect=1)
    error = out["files"][0]["error"]
    assert out["rejected"] == 1 and error.startswith("corrupt image:")
    assert "checking the PNG chunks failed" in error or "decoding the pixels failed" in error


def test_pixel_limit_is_one_documented_configurable_limit(data: Cli, tmp_path: Path) -> None:
    big = tmp_path / "big" / "wide.png"  # 96 MP: past Pillow's default 89.5 MP
    big.parent.mkdir()
    Image.new("L", (12_000, 8_000), 90).save(big)
    out = data.json("upload", str(big))
    assert out["added"] == 1  # the documented limit is 178,956,970 pixels, not Pillow's default
    small = make_image(tmp_path / "big" / "small.png", size=(100, 100))
    out = data.json("upload", str(small), "--max-pixels", "9999", expect=1)
    assert out["files"][0]["error"] == ("image too large: 100x100 is 10,000 pixels, the limit is 9,999 "
                                        "(raise it with --max-pixels)")
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    assert "178,956,970" in readme and "--max-pixels" in readme


# --- item 10: keys record their last use ---------------------------------------------------------------


def test_keys_record_last_use_at_most_once_a_minute(data: Cli, server: BackgroundServer, key: str) -> None:
    def last_used() -> float | None:
        [k] = [k for k in data.json("keys", "list") if k["name"] == "tests"]
        return k["lastUsed"]

    assert last_used() is None
    t0 = time.time()
    assert _get(server, "/api/1/raw-data", key).status_code == 200
    deadline = time.time() + 10
    while last_used() is None and time.time() < deadline:
        time.sleep(0.05)
    first = last_used()
    assert first is not None and t0 - 1 <= first <= time.time()
    for _ in range(5):
        assert _get(server, "/api/1/raw-data", key).status_code == 200
    time.sleep(0.5)
    assert last_used() == first  # not rewritten within the minute
    assert "never" not in data("keys", "list").output.split("tests")[1].splitlines()[0]


# --- item 12 and 13: durable blobs, no orphans ------------------------------------------------------


def test_blobs_are_synced_before_their_rows_commit(data: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                   store: Store) -> None:
    events: list[tuple[str, Any]] = []
    real_sync, real_add = BlobStore.sync, Store.add_samples

    def sync(self: BlobStore, hashes: Any) -> None:
        hashes = list(hashes)
        events.append(("sync", set(hashes)))
        real_sync(self, hashes)

    def add(self: Store, new: Any, conn: Any = None) -> list[int]:
        if conn is None:  # the outer call (it calls itself inside its transaction)
            events.append(("commit", {n.content_hash for n in new}))
        return real_add(self, new, conn)

    monkeypatch.setattr(BlobStore, "sync", sync)
    monkeypatch.setattr(Store, "add_samples", add)
    for i in range(12):
        make_image(tmp_path / "dur" / f"d.{i}.png", seed=200 + i)
    data("upload", str(tmp_path / "dur"))
    commits = [i for i, (kind, _) in enumerate(events) if kind == "commit"]
    assert commits
    for i in commits:
        assert events[i - 1][0] == "sync" and events[i - 1][1] >= events[i][1]


def test_gc_sweeps_orphan_blobs_only(data: Cli, project: Path) -> None:
    assert data.json("gc", "--min-age", "0")["removed"] == 0
    blobs = project / DATA_DIR / "blobs"
    orphan = blobs / "ab" / ("ab" + "0" * 62)
    orphan.write_bytes(b"left by a kill between the blob write and the commit")
    tmp = blobs / "cd" / ".tmp-123-456-7"
    tmp.write_bytes(b"an interrupted write")
    young = blobs / "ef" / ("ef" + "1" * 62)
    young.write_bytes(b"an upload in progress")
    old = time.time() - 7200
    for p in (orphan, tmp):
        os.utime(p, (old, old))
    used = sorted(p for p in blob_files(project) if p not in (orphan, tmp, young))
    dry = data.json("gc", "--dry-run")
    assert sorted(dry["files"]) == sorted([str(orphan), str(tmp)]) and dry["removed"] == 0
    assert orphan.exists() and tmp.exists()
    assert "Removed 2 unreferenced files" in data("gc").output
    assert not orphan.exists() and not tmp.exists() and young.exists()
    assert sorted(p for p in blob_files(project) if p != young) == used
    assert data.json("gc", "--min-age", "0")["removed"] == 1 and not young.exists()
    assert data.json("gc")["removed"] == 0
    with Store.open(project / DATA_DIR) as store:  # every sample's file is still there
        assert all(store.blob_path(s).is_file() for s in store.list_samples(limit=100))


def test_a_failed_ingestion_leaves_no_blob_behind(data: Cli, server: BackgroundServer, key: str, project: Path,
                                                  store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    before = sorted(p.name for p in blob_files(project))
    real_add = Store.add_samples

    def failing(self: Store, new: Any, conn: Any = None) -> list[int]:
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(Store, "add_samples", failing)
    files = [("data", (f"n.{i}.png", _png(300 + i), "image/png")) for i in range(40)]
    r = _post(server, "/api/training/files", key, files=files)
    assert r.status_code == 500 and r.json()["success"] is False  # not a storage error: a JSON 500
    assert sorted(p.name for p in blob_files(project)) == before
    monkeypatch.setattr(Store, "add_samples", real_add)
    assert _post(server, "/api/training/files", key, files=files).json()["added"] == 40


# --- item 4: bounded answers ----------------------------------------------------------------------------


def _rss_peak(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads the server's peak memory from /proc")
def test_long_audio_answers_are_bounded_in_size_and_memory(cli: Cli, project: Path, tmp_path: Path) -> None:
    """A 600 s FLAC of 48 kHz answered 28.8 million values,
    345 MB of JSON: now at most Limits.payload_values (100,000) values, streamed. The bound
    stated: 20 concurrent such requests grow the server's peak memory by less than 300 MB."""
    rate, seconds = 48_000, 600
    path = tmp_path / "long" / "hum.flac"
    path.parent.mkdir()
    t = np.arange(rate * seconds, dtype=np.float32) / rate
    sf.write(path, (0.01 * np.sin(2 * np.pi * 50 * t)).astype(np.float32), rate, format="FLAC")
    del t
    cli("upload", str(path))
    key = cli.json("keys", "create")["key"]
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "labelblocks", "--project", str(project), "serve", "--port",
                             str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}/v1/api/1/raw-data/1"
    try:
        deadline = time.time() + 30
        while True:
            try:
                small = requests.get(base, params={"limitPayloadValues": 5}, headers={"x-api-key": key}, timeout=30)
                break
            except requests.ConnectionError:
                assert time.time() < deadline and proc.poll() is None
                time.sleep(0.2)
        got = small.json()
        expected, _ = sf.read(path, frames=5, dtype="float32")
        assert got["totalPayloadLength"] == rate * seconds
        assert np.allclose([v[0] for v in got["payload"]["values"]], expected)
        assert got["datastreamPayloads"][0]["payload"]["values"] == got["payload"]["values"]
        start_peak = _rss_peak(proc.pid)
        sizes: list[int] = []
        errors: list[BaseException] = []

        def fetch() -> None:
            try:
                r = requests.get(base, headers={"x-api-key": key}, timeout=300)
                doc = r.json()
                assert len(doc["payload"]["values"]) == 100_000 and doc["totalPayloadLength"] == rate * seconds
                sizes.append(len(r.content))
            except BaseException as e:  # collected for the main thread
                errors.append(e)

        threads = [threading.Thread(target=fetch) for _ in range(20)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        assert not errors, errors[0]
        assert max(sizes) < 6_000_000  # two copies of 100,000 values (payload and datastream)
        grown = _rss_peak(proc.pid) - start_peak
        print(f"20 concurrent answers of a 600 s recording: the server's peak memory grew by {grown / 1e6:.0f} MB")
        assert grown < 300 * 1024 * 1024, f"the server grew by {grown / 1e6:.0f} MB"
    finally:
        proc.terminate()
        proc.wait(timeout=10)
