"""Blob storage: the project's media in an S3-compatible bucket (moto's server on loopback,
through fsspec's s3fs), with uploads, the API, blocks, export, deletes and gc working as on
the local folder."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
import requests
from moto.server import ThreadedMotoServer

from labelblocks.project import DATA_DIR, init_project
from labelblocks.server import BackgroundServer
from labelblocks.store.keys import create_key

from .conftest import Cli, make_image
from .services import free_port


@pytest.fixture
def bucket(monkeypatch: pytest.MonkeyPatch) -> Iterator[object]:
    """An S3-compatible server on loopback with an empty bucket ``media``; the S3 client."""
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    for k, v in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                 "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}"}.items():
        monkeypatch.setenv(k, v)
    requests.post(f"http://127.0.0.1:{port}/moto-api/reset", timeout=10)  # moto keeps state per process
    s3 = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{port}")
    s3.create_bucket(Bucket="media")
    try:
        yield s3
    finally:
        server.stop()


def _objects(s3: object) -> dict[str, bytes]:
    listed = s3.list_objects_v2(Bucket="media").get("Contents", [])  # type: ignore[attr-defined]
    return {o["Key"]: s3.get_object(Bucket="media", Key=o["Key"])["Body"].read() for o in listed}  # type: ignore[attr-defined]


def test_a_project_keeps_its_media_in_a_bucket(bucket: object, tmp_path: Path) -> None:
    s3 = bucket
    project = init_project(tmp_path / "team", blobs="s3://media/team")
    cli = Cli(project)
    files = [make_image(tmp_path / "up" / f"cat.{i}.png", seed=i) for i in range(3)]
    files.append(files[0].parent / "dup.png")
    files[-1].write_bytes(files[0].read_bytes())  # the same content twice: one object
    cli("upload", *map(str, files))
    objects = _objects(s3)
    want = {f"team/{h[:2]}/{h}" for h in (hashlib.sha256(f.read_bytes()).hexdigest() for f in files)}
    assert set(objects) == want and len(want) == 3
    assert all(hashlib.sha256(data).hexdigest() == key.rsplit("/", 1)[1] for key, data in objects.items())
    assert not (project / DATA_DIR / "blobs").exists()

    # media are read through a local cache, which may go: the bucket is the truth
    cache = project / DATA_DIR / "blob-cache"
    for f in cache.rglob("*"):
        if f.is_file():
            f.unlink()
    cli("actions", "create", "dedup", "--step", "near-duplicates")
    out = cli.json("actions", "run", "dedup")
    assert out["failed"] == 0
    samples = cli.json("samples", "list", "--include-disabled")
    groups = {s["filename"]: s["metadata"].get("duplicate_group") for s in samples}  # the block read the pixels
    assert groups["dup.png"] == groups["cat.0.png"] is not None and groups["cat.1.png"] is None
    with BackgroundServer(project) as server:
        from labelblocks.project import open_store

        with open_store(project) as store:
            _, key = create_key(store, "t")
        sid = samples[0]["id"]
        got = requests.get(f"{server.url}/api/1/raw-data/{sid}/image", headers={"x-api-key": key})
        assert got.ok and got.content[:8] == b"\x89PNG\r\n\x1a\n"
    cli("export", str(tmp_path / "out"))
    assert len(list((tmp_path / "out").rglob("*.png"))) == 4

    # a changed object is refused when it is fetched, never served
    key_name = next(k for k in objects)
    s3.put_object(Bucket="media", Key=key_name, Body=b"not the same bytes")  # type: ignore[attr-defined]
    for f in cache.rglob("*"):
        if f.is_file():
            f.unlink()
    r = cli("export", str(tmp_path / "out2"), expect=1)
    assert "no longer matches its hash" in r.output
    s3.put_object(Bucket="media", Key=key_name, Body=objects[key_name])  # type: ignore[attr-defined]

    # deleting samples removes objects no other sample uses; gc removes strays
    by_name = {s["filename"]: s["id"] for s in samples}
    cli("samples", "delete", str(by_name["cat.1.png"]))
    assert len(_objects(s3)) == 2
    s3.put_object(Bucket="media", Key="team/ab/" + "ab" * 32, Body=b"stray")  # type: ignore[attr-defined]
    gc = cli.json("gc", "--min-age", "0")
    assert gc["removed"] == 1 and gc["files"] == ["media/team/ab/" + "ab" * 32]
    assert len(_objects(s3)) == 2


def test_many_files_upload_through_worker_processes(bucket: object, tmp_path: Path) -> None:
    """An upload large enough for worker processes writes from each of them to the bucket."""
    project = init_project(tmp_path / "team", blobs="s3://media/many")
    folder = tmp_path / "many"
    for i in range(260):
        make_image(folder / f"im.{i}.png", size=(8, 8), seed=i)
    cli = Cli(project)
    cli("upload", str(folder))  # 260 files on 2 cores: decoded and stored by worker processes
    assert len(cli.json("samples", "list", "--limit", "1000")) == 260
    keys = set(_objects(bucket))
    assert len(keys) == 260 and all(re.match(r"many/[0-9a-f]{2}/[0-9a-f]{64}$", k) for k in keys)


def test_blob_location_errors_are_clear(tmp_path: Path) -> None:
    cli = Cli(tmp_path / "x")
    r = cli("init", str(tmp_path / "a"), "--blobs", "nosuchproto://bucket/x", expect=1)
    assert "blob storage nosuchproto://bucket/x" in r.output
    r = cli("init", str(tmp_path / "b"), "--blobs", "s3://key:secret@bucket/x", expect=1)
    assert "credentials in the environment" in r.output and "secret" not in r.output.replace("credentials", "")
    init_project(tmp_path / "c", blobs=str(tmp_path / "shared"))  # a shared folder, as a path
    assert json.loads((tmp_path / "c" / DATA_DIR / "blobs.json").read_text())["url"] == str(tmp_path / "shared")
