"""`labelblocks sync`: a project kept in step with a folder (on both dialects) and with an
S3-compatible bucket (moto's server on loopback): add, change, delete, rename, idempotence, a
dry run that writes nothing, a kill mid-sync then a re-run, and a million-object listing
that never sits in memory at once."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pycocotools.coco import COCO

from labelblocks.filters import SampleFilter
from labelblocks.project import DATA_DIR, init_project
from labelblocks.sources import Source, SourceObject
from labelblocks.store import Store
from labelblocks.sync import SyncOptions, sync

from .conftest import Cli, both_dialects, kill_when, make_image, project_sql
from .test_blobs import bucket  # noqa: F401  (the S3-compatible server fixture)

pytest_generate_tests = both_dialects


def _state(project: Path) -> dict[str, tuple[Any, ...]]:
    """Every sample by source: (id, filename, label, content hash, updated, disabled, metadata)."""
    with Store.open(project / DATA_DIR) as store:
        return {s.metadata.get("source", f"#{s.id}"): (s.id, s.filename, s.label, s.content_hash, s.updated,
                                                       s.is_disabled, tuple(sorted(s.metadata.items())))
                for s in store.list_samples(SampleFilter(include_disabled=True), limit=None)}


def _folder(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    for i in range(3):
        make_image(src / "cat" / f"c{i}.png", seed=i)
        make_image(src / "dog" / f"d{i}.jpg", seed=10 + i)
    (src / "notes.txt").write_text("not media")
    (src / ".hidden.png").write_bytes(b"x")
    return src


def test_a_folder_synced_added_changed_deleted_and_renamed(project: Path, cli: Cli, tmp_path: Path) -> None:
    src = _folder(tmp_path)
    root = str(src.resolve())
    first = cli.json("sync", str(src), "--label-from", "folder", "--metadata", "site=A")
    assert (first["added"], first["replaced"], first["removed"], first["unchanged"], first["ignored"]) == (6, 0, 0, 0, 2)
    state = _state(project)
    assert sorted(state) == sorted(f"{root}/{d}/{n}{i}.{e}" for d, n, e in (("cat", "c", "png"), ("dog", "d", "jpg"))
                                   for i in range(3))
    c0 = state[f"{root}/cat/c0.png"]
    md = dict(c0[6])
    assert c0[2] == "cat" and md["site"] == "A" and md["source_etag"] == c0[3]

    again = cli.json("sync", str(src), "--label-from", "folder")
    assert (again["added"], again["replaced"], again["removed"], again["unchanged"]) == (0, 0, 0, 6)
    assert _state(project) == state  # a second sync changes nothing, not even a revision

    # a file changes, one is deleted, one is renamed (= deleted + added), one is only touched
    make_image(src / "cat" / "c1.png", size=(32, 20), seed=99)
    (src / "dog" / "d0.jpg").unlink()
    (src / "dog" / "d1.jpg").rename(src / "dog" / "d9.jpg")
    os.utime(src / "cat" / "c2.png", ns=(1, 1))
    third = cli.json("sync", str(src))
    assert (third["added"], third["replaced"], third["removed"], third["unchanged"]) == (1, 1, 2, 3)
    after = _state(project)
    assert f"{root}/dog/d0.jpg" not in after and f"{root}/dog/d1.jpg" not in after
    assert after[f"{root}/dog/d9.jpg"][3] == state[f"{root}/dog/d1.jpg"][3]  # same content, a new sample
    changed, before = after[f"{root}/cat/c1.png"], state[f"{root}/cat/c1.png"]
    assert changed[0] == before[0] and changed[2] == "cat" and changed[3] != before[3]  # id and label stay
    assert dict(changed[6])["site"] == "A" and dict(changed[6])["source_etag"] == changed[3]
    assert changed[4] > before[4]  # its revision changed
    with Store.open(project / DATA_DIR) as store:
        s = store.get_sample(changed[0])
        assert (s.width, s.height) == (32, 20) and store.blob_path(s).read_bytes() == (src / "cat/c1.png").read_bytes()
    assert after[f"{root}/cat/c2.png"] == state[f"{root}/cat/c2.png"]  # touched, same content: unchanged
    assert cli.json("sync", str(src))["unchanged"] == 5

    # synced samples are selected with the usual filters
    listed = cli.json("samples", "list", "--where", f"source={root}/cat/c1.png")
    assert [x["id"] for x in listed] == [changed[0]]
    assert len(cli.json("samples", "list", "--has", "source")) == 5


def test_only_samples_synced_from_this_source_are_removed_and_options_choose_what_happens(
        project: Path, cli: Cli, tmp_path: Path) -> None:
    src, other = _folder(tmp_path), tmp_path / "other"
    make_image(other / "x.png", seed=50)
    cli("sync", str(src))
    cli("sync", str(other))
    cli("upload", str(make_image(tmp_path / "loose" / "y.png", seed=51)))
    (src / "cat" / "c0.png").unlink()
    make_image(src / "cat" / "c1.png", seed=77)

    kept = cli.json("sync", str(src), "--on-delete", "keep", "--on-change", "keep")
    assert (kept["keptGone"], kept["keptChanged"], kept["removed"], kept["replaced"]) == (1, 1, 0, 0)
    disabled = cli.json("sync", str(src), "--on-delete", "disable", "--on-change", "keep")
    assert (disabled["removed"], disabled["keptChanged"]) == (1, 1)
    state = _state(project)
    assert state[f"{src.resolve()}/cat/c0.png"][5] is True
    # idempotent: an already disabled sample is not touched again
    assert cli.json("sync", str(src), "--on-delete", "disable", "--on-change", "keep")["keptGone"] == 1
    assert _state(project) == state
    deleted = cli.json("sync", str(src))
    assert (deleted["removed"], deleted["replaced"]) == (1, 1)
    left = _state(project)
    assert str((other / "x.png").resolve()) in left  # synced from another source: left alone
    assert len([k for k in left if k.startswith("#")]) == 1  # uploaded, not synced: left alone
    assert len(left) == 5 + 1 + 1


def test_a_dry_run_prints_the_plan_and_writes_nothing(project: Path, cli: Cli, tmp_path: Path) -> None:
    src = _folder(tmp_path)
    cli("sync", str(src))
    make_image(src / "cat" / "c0.png", seed=123)
    make_image(src / "new" / "n.png", seed=124)
    (src / "dog" / "d2.jpg").unlink()
    before = _state(project)
    blobs = sorted((project / DATA_DIR / "blobs").rglob("*"))
    out = cli("sync", str(src), "--dry-run").stdout
    root = src.resolve()
    assert f"add             {root}/new/n.png" in out
    assert f"replace         {root}/cat/c0.png" in out and f"delete          {root}/dog/d2.jpg" in out
    assert "Dry run, nothing changed: would add 1, replace 1, delete 1; 4 unchanged; 2 files ignored" in out
    plan = cli.json("sync", str(src), "--dry-run")
    assert sorted((p["do"], p["source"]) for p in plan["plan"]) == [
        ("add", f"{root}/new/n.png"), ("delete", f"{root}/dog/d2.jpg"), ("replace", f"{root}/cat/c0.png")]
    assert _state(project) == before and sorted((project / DATA_DIR / "blobs").rglob("*")) == blobs
    done = cli.json("sync", str(src))
    assert (done["added"], done["replaced"], done["removed"]) == (1, 1, 1)


def test_bad_files_fail_alone_and_bad_input_is_refused(project: Path, cli: Cli, tmp_path: Path) -> None:
    src = _folder(tmp_path)
    (src / "cat" / "broken.png").write_bytes(b"not a png")
    r = cli("sync", str(src), "--json", expect=1)
    doc = json.loads(r.stdout)
    assert doc["added"] == 6 and doc["failed"] == 1 and doc["failures"][0]["source"].endswith("broken.png")
    assert cli("sync", str(tmp_path / "nowhere"), expect=1).stderr.strip().endswith("no such folder")
    assert "sync sets that key itself" in cli("sync", str(src), "--metadata", "source=x", expect=1).stderr
    assert "not in the URL" in cli("sync", "s3://me:secret@bucket/x", expect=1).stderr
    assert "secret" not in cli("sync", "s3://me:secret@bucket/x", expect=1).stderr
    down = {"AWS_ENDPOINT_URL": "http://127.0.0.1:1", "AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "y",
            "AWS_MAX_ATTEMPTS": "1"}
    r = cli("sync", "s3://bucket/x", env=down, expect=1)  # an object store that does not answer: one line
    assert r.stderr.startswith("Error: s3://bucket/x: cannot list it: Could not connect") and "Traceback" not in r.stderr


def test_a_sync_killed_mid_way_finishes_when_run_again(project: Path, tmp_path: Path) -> None:
    src = tmp_path / "many"
    n = 1800  # the upload commits batches of 500
    src.mkdir()
    for i in range(n):
        make_image(src / f"f{i:05d}.png", size=(8, 8), seed=i)
    proc = subprocess.Popen([sys.executable, "-m", "labelblocks", "--project", str(project), "sync", str(src)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    kill_when(proc, project, "SELECT count(*) FROM samples", 1, timeout=120)
    got = project_sql(project).execute("SELECT count(*) FROM samples").fetchone()[0]
    assert 0 < got < n  # killed between two batches' commits, or inside the second
    cli = Cli(project)
    doc = cli.json("sync", str(src))
    assert doc["added"] == n - got and doc["unchanged"] == got and doc["failed"] == 0
    rows = project_sql(project).execute(
        "SELECT value, count(*) FROM sample_metadata WHERE key = 'source' GROUP BY value HAVING count(*) > 1")
    assert rows.fetchall() == []  # nothing added twice
    assert cli.json("sync", str(src))["unchanged"] == n


class _Paged(Source):
    """A source of ``total`` objects made a page at a time, counting how many are alive."""

    def __init__(self, total: int) -> None:
        self.url, self.ignored, self.total = "fake://bucket", 0, total
        self.alive = self.most_alive = 0

    def pages(self, size: int = 1000, known: dict[str, tuple[int, str]] | None = None) -> Iterator[list[SourceObject]]:
        for start in range(0, self.total, size):
            yield [_Counted(self, f"k/{i:07d}.png", f"fake://bucket/k/{i:07d}.png", 10, f"e{i}", f"e{i}")
                   for i in range(start, min(start + size, self.total))]

    def read(self, objects: list[SourceObject]) -> list[bytes | OSError]:
        raise AssertionError("a dry run reads nothing")


class _Counted(SourceObject):
    def __init__(self, source: _Paged, *args: Any) -> None:
        super().__init__(*args)
        object.__setattr__(self, "_source", source)
        source.alive += 1
        source.most_alive = max(source.most_alive, source.alive)

    def __del__(self) -> None:
        self._source.alive -= 1  # type: ignore[attr-defined]


def test_a_million_object_listing_is_read_a_page_at_a_time(tmp_path: Path) -> None:
    fake = _Paged(1_000_000)
    with Store.open(init_project(tmp_path / "proj") / DATA_DIR) as store:
        report = sync(store, fake.url, SyncOptions(dry_run=True), source=fake)
    assert report.added == 1_000_000
    assert fake.most_alive <= 2 * 1000  # a page or two, never the listing


def test_a_bucket_synced_by_etag(bucket: Any, tmp_path: Path) -> None:  # noqa: F811
    s3 = bucket
    imgs = {f"cams/{d}/{n}.png": make_image(tmp_path / "i" / f"{d}{n}.png", seed=i).read_bytes()
            for i, (d, n) in enumerate([("a", "x"), ("a", "y"), ("b", "z")])}
    for k, data in imgs.items():
        s3.put_object(Bucket="media", Key=k, Body=data)
    s3.put_object(Bucket="media", Key="cams/readme.md", Body=b"#")
    s3.put_object(Bucket="media", Key="elsewhere/w.png", Body=imgs["cams/a/x.png"])
    project = init_project(tmp_path / "proj")
    cli = Cli(project)
    first = cli.json("sync", "s3://media/cams", "--label-from", "folder")
    assert (first["added"], first["ignored"]) == (3, 1)
    state = _state(project)
    x = state["s3://media/cams/a/x.png"]
    etag = s3.head_object(Bucket="media", Key="cams/a/x.png")["ETag"].strip('"')
    assert x[2] == "a" and dict(x[6])["source_etag"] == etag and "s3://media/elsewhere/w.png" not in state
    assert cli.json("sync", "s3://media/cams/")["unchanged"] == 3 and _state(project) == state

    s3.put_object(Bucket="media", Key="cams/a/x.png", Body=make_image(tmp_path / "new.png", seed=40).read_bytes())
    s3.delete_object(Bucket="media", Key="cams/b/z.png")
    done = cli.json("sync", "s3://media/cams")
    assert (done["replaced"], done["removed"], done["unchanged"]) == (1, 1, 1)
    after = _state(project)
    assert after["s3://media/cams/a/x.png"][0] == x[0] and after["s3://media/cams/a/x.png"][3] != x[3]
    assert "s3://media/cams/b/z.png" not in after


def test_a_synced_folder_with_a_file_deleted_exports_to_coco(project: Path, cli: Cli, tmp_path: Path) -> None:
    src = _folder(tmp_path)
    cli("sync", str(src), "--label-from", "folder")
    (src / "dog" / "d0.jpg").unlink()
    assert cli.json("sync", str(src))["removed"] == 1
    cli("export", str(tmp_path / "coco"), "--format", "coco")
    files = list((tmp_path / "coco").rglob("*.json"))
    coco = COCO(str(files[0]))
    names = sorted(img["file_name"].rsplit("/", 1)[-1] for img in coco.dataset["images"])
    assert names == ["c0.png", "c1.png", "c2.png", "d1.jpg", "d2.jpg"]
