from __future__ import annotations

import json
from pathlib import Path

import pytest

from labelblocks.errors import InvalidInput
from labelblocks.filters import parse_metadata_json

from .conftest import Cli, blob_files, make_audio, make_image

# (filename, label, metadata) — ids are 1..6 in this order; sample 6 is disabled by the fixture
DATA = [
    ("a.png", "cat", {"site": "Paris", "device": "cam1"}),
    ("b.png", "dog", {"site": "Paris", "device": "cam2"}),
    ("c.png", "cat", {"site": "Lyon", "device": "cam1"}),
    ("d.png", "cat", {"site": "Nice"}),
    ("e.png", None, {}),
    ("f.png", "dog", {"site": "Paris", "reviewed": "yes"}),
]


@pytest.fixture
def dataset(cli: Cli, tmp_path: Path) -> Cli:
    entries = []
    for i, (name, label, md) in enumerate(DATA):
        make_image(tmp_path / "ds" / name, size=(40, 30), seed=i)
        entries.append({"path": name, "category": "testing" if name == "c.png" else "training",
                        "label": {"type": "label", "label": label} if label else {"type": "unlabeled"},
                        "metadata": md})
    (tmp_path / "ds" / "info.labels").write_text(json.dumps({"version": 1, "files": entries}))
    cli("upload", "--info-file", str(tmp_path / "ds" / "info.labels"))
    cli("samples", "disable", "6")
    return cli


FILTER_CASES = [
    ([], [1, 2, 3, 4, 5]),
    (["--include-disabled"], [1, 2, 3, 4, 5, 6]),
    (["--where", "site=Paris"], [1, 2]),
    (["--where", "site=Paris", "--include-disabled"], [1, 2, 6]),
    (["--where", "site=Paris", "--where", "site=Lyon"], [1, 2, 3]),
    (["--where", "site=Paris", "--where", "device=cam1"], [1]),
    (["--where", "site=Paris", "--where", "device=cam1", "--any"], [1, 2, 3]),
    (["--where-not", "site=Paris"], [3, 4, 5]),
    (["--has", "device"], [1, 2, 3]),
    (["--missing", "device"], [4, 5]),
    (["--no-metadata"], [5]),
    (["--no-metadata", "--where", "site=Nice", "--any"], [4, 5]),
    (["--filter-json", '[{"key":"device","op":"neq","values":["cam2"]},{"key":"site","op":"eq","values":[]}]'],
     [1, 3, 4]),
    (["--filter-json", '[{"key":"site","op":"eq","values":["Lyon"]},{"no_metadata":true},{"filters_combinator":"or"}]'],
     [3, 5]),
    (["--label", "cat"], [1, 3, 4]),
    (["--label", "cat", "--label", "dog"], [1, 2, 3, 4]),
    (["--unlabeled"], [5]),
    (["--category", "testing"], [3]),
    (["--search", "b."], [2]),
    (["--search", "%"], []),
    (["--limit", "2"], [1, 2]),
    (["--limit", "2", "--offset", "3"], [4, 5]),
]


@pytest.mark.parametrize(("args", "ids"), FILTER_CASES)
def test_samples_list_filters(dataset: Cli, args: list[str], ids: list[int]) -> None:
    assert [s["id"] for s in dataset.json("samples", "list", *args)] == ids
    table = dataset("samples", "list", *args).stdout.splitlines()  # the listing's, on SQLite
    assert [int(line.split()[0]) for line in table[1:]] == ids if ids else table == ["No samples match."]
    if "--limit" not in args:  # counting builds its SQL differently; it must agree
        assert dataset.json("samples", "list", "--count", *args) == {"count": len(ids)}
        assert dataset("samples", "list", "--count", *args).output.strip() == str(len(ids))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--where", "site"], "expected KEY=VALUE"),
        (["--where", "=x"], "non-empty key"),
        (["--filter-json", "{"], "invalid JSON"),
        (["--filter-json", '{"key":"a"}'], "expected a JSON list"),
        (["--filter-json", '[{"key":"a","op":"like"}]'], "op must be"),
        (["--filter-json", '[{"op":"eq"}]'], "non-empty string 'key'"),
        (["--filter-json", '[{"key":"a","values":[{}]}]'], "list of strings"),
        (["--limit", "-1"], "-1"),
    ],
)
def test_bad_filters_are_clear_errors(dataset: Cli, args: list[str], message: str) -> None:
    r = dataset("samples", "list", *args, expect=None)
    assert r.exit_code in (1, 2)
    assert message in r.output
    assert "Traceback" not in r.output


def test_protocol_filter_parsing_roundtrip() -> None:
    conds, no_md, comb = parse_metadata_json([{"key": "k", "values": [1, "b"]}, {"filters_combinator": "or"}])
    assert conds[0].values == ["1", "b"] and conds[0].op == "eq" and comb == "or" and not no_md
    with pytest.raises(InvalidInput):
        parse_metadata_json([{"filters_combinator": "xor"}])


def test_show_disable_enable_delete(dataset: Cli, project: Path) -> None:
    r = dataset("samples", "show", "1")
    assert "a.png" in r.stdout and "site=Paris" in r.stdout
    s = dataset.json("samples", "show", "6")
    assert s["isDisabled"] is True
    dataset("samples", "enable", "6")
    assert dataset.json("samples", "show", "6")["isDisabled"] is False
    dataset("samples", "disable", "1,2")
    assert [s["id"] for s in dataset.json("samples", "list")] == [3, 4, 5, 6]
    blobs_before = len(blob_files(project))
    dataset("samples", "delete", "3-4")
    assert [s["id"] for s in dataset.json("samples", "list", "--include-disabled")] == [1, 2, 5, 6]
    assert len(blob_files(project)) == blobs_before - 2
    r = dataset("samples", "show", "3", expect=1)
    assert "no sample with id 3" in r.output
    r = dataset("samples", "delete", "1", "99", expect=1)
    assert "no sample with id 99" in r.output
    # nothing was deleted by the failed command
    assert dataset.json("samples", "show", "1")["id"] == 1


def test_label_boxes_and_structured_labels(dataset: Cli, tmp_path: Path) -> None:
    dataset("samples", "label", "1", "--label", "tiger")
    boxes = [{"label": "tiger", "x": 0, "y": 0, "width": 40, "height": 30}]
    dataset("samples", "label", "1", "--boxes", json.dumps(boxes))
    s = dataset.json("samples", "show", "1")
    assert s["label"] == "tiger" and s["boundingBoxes"] == boxes
    (tmp_path / "b.json").write_text(json.dumps([{"label": "x", "x": 1, "y": 1, "width": 5, "height": 5}]))
    dataset("samples", "label", "1", "--boxes", f"@{tmp_path / 'b.json'}")
    assert dataset.json("samples", "show", "1")["boundingBoxes"][0]["label"] == "x"
    dataset("samples", "label", "1", "--clear")
    assert "label" not in dataset.json("samples", "show", "1")
    # a box outside the image, bad JSON, negative sizes: refused, nothing written
    r = dataset("samples", "label", "1", "--boxes", '[{"label":"a","x":30,"y":0,"width":20,"height":5}]', expect=1)
    assert "does not fit in the 40x30 image" in r.output
    r = dataset("samples", "label", "1", "--boxes", "[{", expect=1)
    assert "invalid JSON" in r.output
    r = dataset("samples", "label", "1", "--label", "z", "--boxes", '[{"label":"a","x":0,"y":0,"width":-1,"height":5}]',
                expect=1)
    assert "width" in r.output
    assert dataset.json("samples", "show", "1")["boundingBoxes"][0]["label"] == "x"
    assert "label" not in dataset.json("samples", "show", "1")
    # structured labels only on audio
    r = dataset("samples", "label", "1", "--structured-labels", '[{"startIndex":0,"endIndex":3,"label":"a"}]', expect=1)


def test_structured_labels_on_audio_normalise_overlaps(cli: Cli, tmp_path: Path) -> None:
    make_audio(tmp_path / "s.wav", seconds=1, rate=100)
    cli("upload", str(tmp_path / "s.wav"), "--no-label")
    ranges = [{"startIndex": 0, "endIndex": 50, "label": "a"}, {"startIndex": 50, "endIndex": 99, "label": "b"}]
    cli("samples", "label", "1", "--structured-labels", json.dumps(ranges))
    assert cli.json("samples", "show", "1")["structuredLabels"] == [
        {"startIndex": 0, "endIndex": 50, "label": "a"}, {"startIndex": 51, "endIndex": 99, "label": "b"}]
    r = cli("samples", "label", "1", "--structured-labels", '[{"startIndex":0,"endIndex":100,"label":"a"}]', expect=1)
    assert "at most 99" in r.output
    r = cli("samples", "label", "1", "--structured-labels", '[{"startIndex":5,"endIndex":2,"label":"a"}]', expect=1)
    assert "endIndex >= startIndex" in r.output


def test_metadata_set_unset_single_and_filtered(dataset: Cli) -> None:
    dataset("metadata", "set", "5", "site=Lille", "device=cam9")
    assert dataset.json("samples", "show", "5")["metadata"] == {"site": "Lille", "device": "cam9"}
    out = dataset.json("metadata", "set", "--where", "site=Paris", "reviewed=yes")
    # samples 1, 2 and the disabled 6 (already reviewed=yes)
    assert out == {"matched": 3, "changed": 2}
    r = dataset("metadata", "set", "--where", "site=Paris", "reviewed=no")
    assert "Changed 3 of 3 matching samples." in r.stdout
    assert [s["id"] for s in dataset.json("samples", "list", "--where", "reviewed=no", "--include-disabled")] == [1, 2, 6]
    out = dataset.json("metadata", "unset", "--has", "reviewed", "reviewed")
    assert out == {"matched": 3, "changed": 3}
    dataset("metadata", "unset", "5", "device")
    assert dataset.json("samples", "show", "5")["metadata"] == {"site": "Lille"}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["metadata", "set", "reviewed=yes"], "say which samples"),
        (["metadata", "set", "1"], "give KEY=VALUE"),
        (["metadata", "set", "1", "bad"], "expected KEY=VALUE"),
        (["metadata", "set", "999", "a=b"], "no sample with id 999"),
        (["metadata", "unset", "1"], "give one or more KEYs"),
    ],
)
def test_metadata_bad_input(dataset: Cli, args: list[str], message: str) -> None:
    before = dataset.json("samples", "list", "--include-disabled")
    r = dataset(*args, expect=None)
    assert r.exit_code in (1, 2) and message in r.output
    assert dataset.json("samples", "list", "--include-disabled") == before


def test_metadata_set_is_one_transaction(dataset: Cli) -> None:
    # one bad id in --ids: nothing changes anywhere
    r = dataset("metadata", "set", "--ids", "1,2,77", "x=y", expect=1)
    assert "77" in r.output
    assert dataset.json("samples", "list", "--has", "x") == []


def test_metadata_keys(dataset: Cli) -> None:
    keys = {k["key"]: k for k in dataset.json("metadata", "keys")}
    assert keys["site"] == {"key": "site", "distinctValues": 3, "samples": 5}
    assert keys["device"]["distinctValues"] == 2


def _comparable(samples: list[dict]) -> list[dict]:
    drop = {"id", "created", "updated"}
    return sorted(({k: v for k, v in s.items() if k not in drop} for s in samples), key=lambda s: s["filename"])


def test_export_roundtrip_is_identical(dataset: Cli, tmp_path: Path) -> None:
    make_audio(tmp_path / "au" / "s.wav", seconds=1, rate=100)
    (tmp_path / "au" / "structured_labels.labels").write_text(json.dumps({
        "version": 1, "structuredLabels": {"s.wav": [{"startIndex": 0, "endIndex": 49, "label": "a"},
                                                     {"startIndex": 50, "endIndex": 99, "label": "b"}]}}))
    dataset("upload", str(tmp_path / "au"), "--metadata", "kind=audio")
    dataset("samples", "label", "1", "--boxes", '[{"label":"cat","x":2,"y":3,"width":10,"height":12}]')
    # two samples with the same file name must both survive
    make_image(tmp_path / "dup" / "a.png", size=(40, 30), seed=42)
    dataset("upload", str(tmp_path / "dup"))
    original = dataset.json("samples", "list", "--include-disabled", "--limit", "100")
    out = dataset.json("export", str(tmp_path / "export"))
    assert out["exported"] == len(original) == 8
    assert (tmp_path / "export" / "info.labels").exists()
    r = dataset("export", str(tmp_path / "export"), expect=1)
    assert "not an empty folder" in r.output

    copy = Cli(tmp_path / "copy")
    from labelblocks.project import init_project

    init_project(tmp_path / "copy")
    copy("upload", "--info-file", str(tmp_path / "export" / "info.labels"))
    again = copy.json("samples", "list", "--include-disabled", "--limit", "100")
    assert _comparable(again) == _comparable(original)


def test_export_with_filter(dataset: Cli, tmp_path: Path) -> None:
    out = dataset.json("export", str(tmp_path / "paris"), "--where", "site=Paris")
    assert out["exported"] == 3
    info = json.loads((tmp_path / "paris" / "info.labels").read_text())
    assert sorted(f["name"] for f in info["files"]) == ["a.png", "b.png", "f.png"]
    assert [f.get("enabled", True) for f in info["files"] if f["name"] == "f.png"] == [False]
