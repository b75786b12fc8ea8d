from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from labelblocks.uploads import label_from_filename, split_category

from .conftest import Cli, blob_files, make_audio, make_image, project_sql


def test_upload_folder_with_metadata_infers_labels(cli: Cli, images, tmp_path: Path) -> None:
    images(names=["cat.01.png", "dog_2.jpg", "bird house-3.bmp"])
    out = cli.json("upload", str(tmp_path / "imgs"), "--metadata", "site=Paris", "--metadata", "device=cam1")
    assert out["added"] == 3 and out["rejected"] == 0
    samples = cli.json("samples", "list")
    assert sorted(s["label"] for s in samples) == ["bird house-3", "cat", "dog_2"]
    assert all(s["metadata"] == {"site": "Paris", "device": "cam1"} for s in samples)
    by_name = {s["filename"]: s for s in samples}
    assert by_name["cat.01.png"]["imageDimensions"] == {"width": 64, "height": 48}
    assert by_name["dog_2.jpg"]["mediaType"] == "image/jpeg"


def test_upload_explicit_label_and_no_label(cli: Cli, images, tmp_path: Path) -> None:
    files = images(n=2)
    cli("upload", str(files[0]), "--label", "animal")
    cli("upload", str(files[1]), "--no-label")
    labels = {s["filename"]: s.get("label") for s in cli.json("samples", "list")}
    assert labels == {"cat.0.png": "animal", "cat.1.png": None}
    r = cli("upload", str(files[0]), "--label", "x", "--no-label", expect=2)
    assert "cannot be used together" in r.output


@pytest.mark.parametrize(
    ("name", "label"),
    [("cat.01.png", "cat"), ("dog_2.jpg", "dog_2"), ("bird house-3.bmp", "bird house-3"), (".hidden.png", None),
     ("éclair.png", None), ("a+b.png", "a")],
)
def test_label_inference_rule(name: str, label: str | None) -> None:
    assert label_from_filename(name) == label


def test_summary_and_rejections(cli: Cli, images, tmp_path: Path, project: Path) -> None:
    images(n=2)
    (tmp_path / "imgs" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    (tmp_path / "imgs" / "notes.txt").write_text("hello")
    truncated = (tmp_path / "imgs" / "cat.0.png").read_bytes()[:-40]
    (tmp_path / "imgs" / "trunc.png").write_bytes(truncated)
    r = cli("upload", str(tmp_path / "imgs"), expect=1)
    assert "Added 2 samples, skipped 0 duplicates, rejected 3." in r.stdout
    assert "broken.png" in r.stderr and "notes.txt: unsupported file type .txt" in r.stderr
    assert "trunc.png" in r.stderr
    # the rejected files left no row and no blob
    assert len(cli.json("samples", "list")) == 2
    assert len(blob_files(project)) == 2


def test_duplicates(cli: Cli, images, tmp_path: Path) -> None:
    files = images(n=2)
    cli("upload", str(tmp_path / "imgs"))
    out = cli.json("upload", str(files[0]), "--disallow-duplicates")
    assert out["added"] == 0 and out["duplicates"] == 1
    # duplicates inside one upload are caught too
    (tmp_path / "imgs2").mkdir()
    (tmp_path / "imgs2" / "x.png").write_bytes(files[1].read_bytes())
    (tmp_path / "imgs2" / "y.png").write_bytes(files[1].read_bytes())
    make_image(tmp_path / "imgs2" / "z.png", seed=99)
    out = cli.json("upload", str(tmp_path / "imgs2"), "--disallow-duplicates")
    assert (out["added"], out["duplicates"]) == (1, 2)
    # without the flag, the same content under another name is a second sample sharing the blob
    (tmp_path / "renamed.png").write_bytes(files[0].read_bytes())
    out = cli.json("upload", str(tmp_path / "renamed.png"))
    assert out["added"] == 1
    # the same file again (content and name) is skipped and counted, unless --allow-duplicates
    out = cli.json("upload", str(files[0]))
    assert (out["added"], out["duplicates"]) == (0, 1)
    assert "already in the project" in out["files"][0]["error"]
    out = cli.json("upload", str(files[0]), "--allow-duplicates")
    assert out["added"] == 1


def test_category_split_is_deterministic_and_about_80_20(cli: Cli, tmp_path: Path) -> None:
    for i in range(200):
        make_image(tmp_path / "many" / f"x{i}.png", size=(8, 8), seed=i)
    cli("upload", str(tmp_path / "many"), "--category", "split")
    samples = cli.json("samples", "list", "--limit", "1000")
    cats = {s["filename"]: s["category"] for s in samples}
    train = sum(c == "training" for c in cats.values())
    assert 140 <= train <= 185
    assert set(cats.values()) == {"training", "testing"}
    for s in samples:
        assert s["category"] == split_category(s["contentHash"])


def test_exif_orientation_swaps_dimensions(cli: Cli, tmp_path: Path) -> None:
    img = Image.new("RGB", (80, 30), (200, 10, 10))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated 90 degrees
    img.save(tmp_path / "rot.jpg", exif=exif)
    cli("upload", str(tmp_path / "rot.jpg"))
    [s] = cli.json("samples", "list")
    assert (s["width"], s["height"]) == (30, 80)


@pytest.mark.parametrize("mode", ["L", "P", "RGBA", "I;16"])
def test_image_modes_upload(cli: Cli, tmp_path: Path, mode: str) -> None:
    make_image(tmp_path / f"m_{mode.replace(';', '')}.png", mode=mode)
    out = cli.json("upload", str(tmp_path))
    assert out["added"] == 1


@pytest.mark.parametrize(("fname", "fmt"), [("a.wav", None), ("b.flac", None), ("c.ogg", "OGG")])
def test_audio_formats(cli: Cli, tmp_path: Path, fname: str, fmt: str | None) -> None:
    make_audio(tmp_path / "au" / fname, seconds=0.5, rate=8000, channels=2, fmt=fmt)
    cli("upload", str(tmp_path / "au"), "--no-label")
    [s] = cli.json("samples", "list")
    assert s["frequency"] == 8000
    assert s["valuesCount"] == 4000
    assert s["intervalMs"] == pytest.approx(0.125)
    assert s["totalLengthMs"] == pytest.approx(500)
    assert s["chartType"] == "chart"


def test_corrupt_and_empty_audio_rejected(cli: Cli, tmp_path: Path) -> None:
    make_audio(tmp_path / "au" / "good.wav")
    data = (tmp_path / "au" / "good.wav").read_bytes()
    (tmp_path / "au" / "bad.wav").write_bytes(b"RIFF" + b"\x00" * 20)
    (tmp_path / "au" / "half.flac").write_bytes(data[:30])
    make_audio(tmp_path / "au" / "empty.wav", seconds=0)
    (tmp_path / "au" / "cut.wav").write_bytes(data[:100])  # a copy that stopped early
    streamed = bytearray(data)  # a writer that streams leaves the sizes at their placeholder
    at = streamed.find(b"data")
    streamed[4:8] = streamed[at + 4 : at + 8] = b"\xff\xff\xff\xff"
    (tmp_path / "au" / "streamed.wav").write_bytes(bytes(streamed))
    out = cli.json("upload", str(tmp_path / "au"), expect=1)
    rejected = {Path(f["path"]).name: f["error"] for f in out["files"] if not f["success"]}
    assert set(rejected) == {"bad.wav", "half.flac", "empty.wav", "cut.wav"}
    assert "no samples" in rejected["empty.wav"]
    assert rejected["cut.wav"] == ("truncated audio: the WAV header announces 32000 bytes of samples, "
                                   "the file holds 56")
    assert "BytesIO" not in rejected["bad.wav"] and "Format not recognised" in rejected["half.flac"] + rejected["bad.wav"]
    assert out["added"] == 2
    assert {s["filename"]: s["valuesCount"] for s in cli.json("samples", "list")} == {"good.wav": 16000,
                                                                                      "streamed.wav": 16000}


def test_bad_metadata_argument(cli: Cli, images, tmp_path: Path) -> None:
    images(n=1)
    r = cli("upload", str(tmp_path / "imgs"), "--metadata", "site", expect=1)
    assert "expected KEY=VALUE" in r.output
    assert cli.json("samples", "list") == []


def _write_info(tmp_path: Path, files: list[dict]) -> Path:
    p = tmp_path / "ds" / "info.labels"
    p.parent.mkdir(exist_ok=True)
    p.write_text(json.dumps({"version": 1, "files": files}))
    return p


def test_info_file_with_labels_boxes_metadata_and_multilabel(cli: Cli, tmp_path: Path) -> None:
    make_image(tmp_path / "ds" / "img" / "a.png", size=(100, 80))
    make_image(tmp_path / "ds" / "img" / "b.png", size=(100, 80), seed=3)
    make_audio(tmp_path / "ds" / "snd" / "c.wav", seconds=1, rate=1000)
    info = _write_info(tmp_path, [
        {"path": "img/a.png", "category": "training", "label": {"type": "label", "label": "car"},
         "metadata": {"site": "Paris"},
         "boundingBoxes": [{"label": "car", "x": 10, "y": 5, "width": 30, "height": 20}]},
        {"path": "img/b.png", "name": "renamed.png", "category": "testing", "label": {"type": "unlabeled"}},
        {"path": "snd/c.wav", "category": "training",
         "label": {"type": "multi-label", "labels": [{"startIndex": 0, "endIndex": 499, "label": "noise"},
                                                      {"startIndex": 500, "endIndex": 999, "label": "speech"}]}},
    ])
    out = cli.json("upload", "--info-file", str(info))
    assert out["added"] == 3
    s = {x["filename"]: x for x in cli.json("samples", "list")}
    assert s["a.png"]["label"] == "car" and s["a.png"]["metadata"] == {"site": "Paris"}
    assert s["a.png"]["boundingBoxes"] == [{"label": "car", "x": 10, "y": 5, "width": 30, "height": 20}]
    assert s["renamed.png"]["category"] == "testing" and "label" not in s["renamed.png"]
    assert [x["label"] for x in s["c.wav"]["structuredLabels"]] == ["noise", "speech"]


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"path": "missing.png"}, "not found"),
        ({"path": "a.png", "boundingBoxes": [{"label": "x", "x": 90, "y": 0, "width": 20, "height": 5}]}, "outside"),
        ({"path": "a.png", "boundingBoxes": [{"label": "x", "x": 0, "y": 0, "width": -3, "height": 5}]}, "width"),
        ({"path": "a.png", "metadata": {"n": 3}}, "metadata"),
        ({"path": "a.png", "label": {"type": "weird"}}, "unknown label type"),
        ({"path": "a.png", "category": "nope"}, "unknown category"),
        ("just a string", "expected an object"),
    ],
)
def test_info_file_bad_entries_rejected_alone(cli: Cli, tmp_path: Path, entry, message: str, project: Path) -> None:
    make_image(tmp_path / "ds" / "a.png", size=(100, 80))
    make_image(tmp_path / "ds" / "ok.png", size=(10, 10), seed=5)
    info = _write_info(tmp_path, [entry, {"path": "ok.png", "label": {"type": "label", "label": "fine"}}])
    out = cli.json("upload", "--info-file", str(info), expect=1)
    assert out["added"] == 1 and out["rejected"] == 1
    [bad] = [f for f in out["files"] if not f["success"]]
    assert message in bad["error"] and "files[0]" in bad["error"]
    assert len(blob_files(project)) == 1


def test_info_file_wrong_version_rejects_the_file(cli: Cli, tmp_path: Path) -> None:
    p = tmp_path / "info.labels"
    p.write_text(json.dumps({"version": 2, "files": []}))
    r = cli("upload", "--info-file", str(p), expect=1)
    assert "expected \"version\": 1, got 2" in r.output
    p.write_text("{not json")
    r = cli("upload", "--info-file", str(p), expect=1)
    assert "not valid JSON" in r.output


def test_companion_label_files_are_honoured(cli: Cli, tmp_path: Path) -> None:
    make_image(tmp_path / "d" / "a.png", size=(50, 50))
    make_audio(tmp_path / "d" / "s.wav", seconds=1, rate=100)
    (tmp_path / "d" / "bounding_boxes.labels").write_text(json.dumps({
        "version": 1, "type": "bounding-box-labels",
        "boundingBoxes": {"a.png": [{"label": "dog", "x": 1, "y": 2, "width": 10, "height": 10}]}}))
    (tmp_path / "d" / "structured_labels.labels").write_text(json.dumps({
        "version": 1, "type": "structured-labels",
        "structuredLabels": {"s.wav": [{"startIndex": 0, "endIndex": 99, "label": "hum"}]}}))
    cli("upload", str(tmp_path / "d"), "--no-label")
    s = {x["filename"]: x for x in cli.json("samples", "list")}
    assert s["a.png"]["boundingBoxes"][0]["label"] == "dog"
    assert s["s.wav"]["structuredLabels"] == [{"startIndex": 0, "endIndex": 99, "label": "hum"}]


def _processes_mentioning(text: str) -> list[int]:
    """Pids of live processes whose command line contains ``text`` (Linux /proc)."""
    out = []
    for d in Path("/proc").iterdir():
        try:
            if d.name.isdigit() and text in (d / "cmdline").read_bytes().decode(errors="replace") \
                    and "Z" not in (d / "stat").read_text().split(") ", 1)[1][:1]:
                out.append(int(d.name))
        except OSError:
            continue
    return out


def test_upload_interrupted_by_sigkill_leaves_only_whole_samples(tmp_path: Path, project: Path) -> None:
    folder = tmp_path / "many"
    for i in range(1500):
        make_image(folder / f"f{i:04d}.png", size=(16, 16), seed=i)
    cmd = [sys.executable, "-m", "labelblocks", "--project", str(project), "upload", str(folder),
           "--metadata", "batch=one", "--json"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    db = project_sql(project)
    import sqlite3

    deadline = time.time() + 60
    while time.time() < deadline:
        time.sleep(0.05)
        try:
            n = db.execute("SELECT count(*) FROM samples").fetchone()[0]
        except sqlite3.OperationalError:
            continue
        if n > 0 or proc.poll() is not None:
            break
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    # its worker processes notice and exit instead of waiting for work forever
    deadline = time.time() + 10
    while _processes_mentioning(str(project)) and time.time() < deadline:
        time.sleep(0.1)
    assert _processes_mentioning(str(project)) == []
    con = db
    n = con.execute("SELECT count(*) FROM samples").fetchone()[0]
    # every committed sample is whole: its metadata row and its blob exist
    assert con.execute("SELECT count(*) FROM sample_metadata WHERE key='batch'").fetchone()[0] == n
    for (h,) in con.execute("SELECT content_hash FROM samples"):
        assert (project / ".labelblocks" / "blobs" / h[:2] / h).exists()
    # running again with --disallow-duplicates finishes the rest without re-adding
    r = subprocess.run([*cmd[:-1], "--disallow-duplicates", "--json"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["added"] + out["duplicates"] == 1500
    assert out["duplicates"] == n
    assert db.execute("SELECT count(*) FROM samples").fetchone()[0] == 1500


def test_a_fifo_named_like_an_image_is_refused_not_waited_on(tmp_path: Path, project: Path) -> None:
    """Reading a FIFO waits for a writer forever: anything that is not a regular file is refused,
    named, and the rest of the upload goes on (a real process, so a hang would time out)."""
    folder = tmp_path / "d"
    make_image(folder / "cat.1.png", seed=1)
    os.mkfifo(folder / "dog.2.png")
    os.mkfifo(tmp_path / "named.png")
    r = subprocess.run([sys.executable, "-m", "labelblocks", "--project", str(project), "upload", str(folder),
                        str(tmp_path / "named.png"), "--json"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 1, r.stderr
    files = {Path(f["path"]).name: f for f in json.loads(r.stdout)["files"]}
    assert files["cat.1.png"]["status"] == "added"
    for name in ("dog.2.png", "named.png"):
        assert files[name]["status"] == "rejected" and "not a regular file" in files[name]["error"]
