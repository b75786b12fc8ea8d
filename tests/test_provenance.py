"""Labels you can trust: an action applied any number of times equals once, what a preview
counts is what apply writes, and every box and value says who wrote it (issue 35)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from labelblocks import provenance
from labelblocks.diff import box_changes, diff
from labelblocks.model import BoundingBox, Sample
from tests.conftest import Cli, make_image

# -- the algebra ----------------------------------------------------------------------------------


def box(label: str, x: int, y: int = 0, w: int = 10, h: int = 10) -> BoundingBox:
    return BoundingBox(label=label, x=x, y=y, width=w, height=h)


@pytest.mark.parametrize(("before", "after", "counts"), [
    ([], [box("a", 0), box("b", 0), box("c", 0)], {"added": 3, "removed": 0, "renamed": 0}),  # one place, 3 labels
    ([box("a", 0)], [box("a", 0), box("a", 0)], {"added": 1, "removed": 0, "renamed": 0}),  # a duplicate counts
    ([box("a", 0), box("a", 0)], [box("a", 0)], {"added": 0, "removed": 1, "renamed": 0}),
    ([box("a", 0)], [box("b", 0)], {"added": 0, "removed": 0, "renamed": 1}),
    ([box("a", 0), box("b", 0)], [box("c", 0)], {"added": 0, "removed": 1, "renamed": 1}),
    ([box("a", 0)], [box("a", 5)], {"added": 1, "removed": 1, "renamed": 0}),
    ([box("a", 0)], [box("a", 0)], {}),
])
def test_the_diff_counts_boxes_as_a_multiset(before: list[BoundingBox], after: list[BoundingBox],
                                              counts: dict[str, int]) -> None:
    s = Sample(id=1, filename="x.png", bounding_boxes=before)
    d = diff(s, s.model_copy(update={"bounding_boxes": after}))
    assert d.counts() == counts
    # what the diff describes, applied to `before`, gives `after`
    kinds = box_changes(before, after)
    rebuilt = Counter(provenance.box_key(b.box) for b in kinds if b.kind in ("kept", "added", "renamed"))
    assert rebuilt == Counter(provenance.box_key(b) for b in after)


def test_strip_then_contribute_replaces_an_actions_boxes_and_keeps_everyone_elses() -> None:
    person = box("tree", 40)
    s0 = Sample(id=1, filename="x.png", label="cat", bounding_boxes=[person, box("circle", 0)],
                metadata={"site": "A"})
    writer = provenance.action_writer("detect", 1, 1)
    # the action adds two boxes, renames the circle and writes metadata
    s1 = s0.model_copy(update={"bounding_boxes": [person, box("ring", 0), box("dog", 20), box("dog", 60)],
                               "metadata": {"site": "A", "labeled_by": "m"}})
    rec = provenance.contribute(s0, {}, s1, writer)
    assert provenance.box_writers(s1, rec) == [None, writer, writer, writer]
    # without the action: the person's box and the circle it renamed, and no labeled_by
    back = provenance.strip(s1, rec, "detect")
    assert Counter(map(provenance.box_key, back.sample.bounding_boxes)) == Counter(map(provenance.box_key, s0.bounding_boxes))
    assert back.sample.metadata == s0.metadata
    # another action's strip leaves the sample as it is
    assert provenance.strip(s1, rec, "other").sample == s1
    # a person relabels one of the action's dogs: it is theirs, and taken over from the action
    s2 = s1.model_copy(update={"bounding_boxes": [person, box("ring", 0), box("wolf", 20), box("dog", 60)]})
    rec2 = provenance.contribute(s1, rec, s2, provenance.person_writer("cli"))
    assert provenance.box_writers(s2, rec2)[2] == {"person": "cli"}
    back2 = provenance.strip(s2, rec2, "detect")
    assert box("wolf", 20) in back2.sample.bounding_boxes and box("dog", 60) not in back2.sample.bounding_boxes
    assert ("wolf", 20, 0, 10, 10) in back2.taken
    # a new box of the action's at the person's box's place is dropped, not added beside it
    final = [*back2.sample.bounding_boxes, box("dog", 20), box("dog", 60)]
    kept = provenance.drop_taken(back2.sample, final, back2.taken)
    assert box("dog", 20) not in kept and box("dog", 60) in kept and box("wolf", 20) in kept


def test_a_value_someone_changed_since_is_theirs() -> None:
    s0 = Sample(id=1, filename="x.png", label="cat")
    s1 = s0.model_copy(update={"label": "dog"})
    rec = provenance.contribute(s0, {}, s1, provenance.action_writer("a", 1, 1))
    assert provenance.strip(s1, rec, "a").sample.label == "cat"
    edited = s1.model_copy(update={"label": "wolf"})  # a person's edit, through any path
    assert provenance.strip(edited, rec, "a").sample.label == "wolf"
    assert "label" not in provenance.field_writers(edited, rec)


# -- through the CLI ------------------------------------------------------------------------------


def boxes_of(cli: Cli) -> dict[str, Counter[tuple[Any, ...]]]:
    return {s["filename"]: Counter((b["label"], b["x"], b["y"], b["width"], b["height"]) for b in s["boundingBoxes"])
            for s in cli.json("samples", "list", "--include-disabled")}


@pytest.fixture
def six(cli: Cli, tmp_path: Path) -> Cli:
    for i in range(6):
        make_image(tmp_path / "d" / f"img.{i}.png", size=(64, 48), seed=i)
    cli("upload", str(tmp_path / "d"), "--no-label")
    return cli


def test_a_box_action_applied_again_replaces_its_boxes(six: Cli) -> None:
    cli = six
    # a person's box on sample 1 stays through everything
    cli("samples", "label", "1", "--boxes", '[{"label":"tree","x":40,"y":30,"width":20,"height":10}]')
    cli("actions", "create", "b", "--step", "fake-boxer", "-p", "label=thing",
        "--step", "fake-renamer", "-p", "from=thing", "-p", "to=ring")
    job = cli.json("actions", "preview", "b", "--limit", "2")["jobId"]
    cli("proposals", "apply", str(job))
    ran = cli.json("actions", "run", "b")
    assert ran["unchanged"] == 2 and ran["applied"] == 4  # the applied preview counts as the action's run
    once = boxes_of(cli)
    assert all(sum(c.values()) == (2 if name == "img.0.png" else 1) for name, c in once.items())
    cli("actions", "run", "b", "--all")
    assert boxes_of(cli) == once
    cli("split", "--train", "0.5", "--validation", "0.25", "--test", "0.25", "--stratify", "none")
    cli("actions", "run", "b")
    assert boxes_of(cli) == once
    shown = cli.json("samples", "show", "1")
    by = shown["writtenBy"]["boundingBoxes"]
    assert by[0] == {"person": "cli"}
    assert by[1]["action"] == "b" and by[1]["step"] == 2  # renamed by step 2: the action's own box
    assert "by action b" in cli("samples", "show", "1").stdout


def test_an_action_that_renames_uploaded_boxes_puts_them_back_before_running_again(six: Cli) -> None:
    cli = six
    cli("samples", "label", "2", "--boxes", '[{"label":"circle","x":1,"y":1,"width":20,"height":10}]')
    cli("actions", "create", "r", "--step", "relabel", "-p", "mapping=circle -> ring")
    cli("actions", "run", "r")
    after = boxes_of(cli)
    assert after["img.1.png"] == Counter({("ring", 1, 1, 20, 10): 1})
    cli("actions", "run", "r", "--all")
    assert boxes_of(cli) == after
    # the mapping changes: the new one renames the original circle, not the ring
    cli("actions", "create", "r", "--step", "relabel", "-p", "mapping=circle -> disc", "--replace")
    cli("actions", "run", "r", "--all")
    assert boxes_of(cli)["img.1.png"] == Counter({("disc", 1, 1, 20, 10): 1})


def test_a_box_a_person_corrected_is_not_duplicated(six: Cli) -> None:
    cli = six
    cli("actions", "create", "b", "--step", "fake-boxer", "-p", "label=thing")
    cli("actions", "run", "b")
    s = cli.json("samples", "show", "3")
    [b] = s["boundingBoxes"]
    moved = {**b, "label": "person", "x": b["x"] + 1}  # renamed and nudged: IoU >= 0.9
    cli("samples", "label", "3", "--boxes", f'[{{"label":"person","x":{moved["x"]},"y":{b["y"]},'
                                            f'"width":{b["width"]},"height":{b["height"]}}}]')
    cli("actions", "run", "b", "--all")
    s = cli.json("samples", "show", "3")
    assert [x["label"] for x in s["boundingBoxes"]] == ["person"]
    assert s["writtenBy"]["boundingBoxes"] == [{"person": "cli"}]
    # the other samples kept exactly one box of one run
    assert all(sum(c.values()) == 1 for c in boxes_of(cli).values())


def test_each_steps_provenance_is_kept_under_its_name(six: Cli, monkeypatch: pytest.MonkeyPatch) -> None:
    cli = six
    cli("actions", "create", "two", "--step", "fake-noter", "-p", "model=detector-1", "-p", "prompt=find cats",
        "--step", "fake-boxer", "--step", "relabel", "-p", "mapping=noted -> cat")
    # fake-boxer writes labeled_by too; the noter's labeled_by and prompt stay under its name
    cli("actions", "run", "two")
    s = cli.json("samples", "show", "1")
    md = s["metadata"]
    assert md["fake-noter.labeled_by"] == "detector-1" and md["fake-boxer.labeled_by"] == "fake-boxer"
    assert md["labeled_by"] == "fake-boxer" and md["prompt"] == "find cats"
    by = s["writtenBy"]
    assert by["metadata"]["prompt"]["step"] == 1 and by["metadata"]["labeled_by"]["step"] == 2
    assert by["label"]["step"] == 3 and s["label"] == "cat"
    # and applied again, nothing changes
    before = cli.json("samples", "list")
    cli("actions", "run", "two", "--all")
    assert cli.json("samples", "list") == before


def test_what_a_preview_counts_is_what_apply_writes(six: Cli) -> None:
    cli = six
    # three boxes at one place with three labels, and a duplicate: a multiset of four boxes per sample
    plan = {"img": [{"label": lab, "x": 1, "y": 1, "width": 10, "height": 10, "score": 0.9}
                     for lab in ("cat", "dog", "cow", "cow")]}
    cli("actions", "create", "d", "--step", "fake-detector", "-p", f"plan={__import__('json').dumps(plan)}")
    preview = cli.json("actions", "preview", "d", "--limit", "6")
    assert preview["total"]["boxesAdded"] == 24 and len(preview["changes"]) == 6
    shown = cli("proposals", "show", str(preview["jobId"])).stdout
    assert shown.count("boxes added: 4 (2x cow, cat, dog)") == 6
    assert "boxes added: 24" in shown
    listed = cli.json("proposals", "show", str(preview["jobId"]))
    assert listed["total"]["boxesAdded"] == 24
    assert cli.json("jobs", "show", str(preview["jobId"]))["pendingChanges"]["boxesAdded"] == 24
    assert "boxes added: 24" in cli("jobs", "show", str(preview["jobId"])).stdout
    before = sum(sum(c.values()) for c in boxes_of(cli).values())
    cli("proposals", "apply", str(preview["jobId"]))
    assert sum(sum(c.values()) for c in boxes_of(cli).values()) - before == 24


# -- nothing changes without a word ---------------------------------------------------------------


@pytest.fixture
def example(cli: Cli, tmp_path: Path) -> tuple[Cli, Path]:
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    subprocess.run([sys.executable, str(root / "examples" / "make_dataset.py"), str(tmp_path / "ex")], check=True,
                   capture_output=True)
    return cli, tmp_path / "ex"


def test_an_info_file_onto_existing_samples_is_staged_for_review(example: tuple[Cli, Path]) -> None:
    cli, ex = example
    cli("upload", str(ex / "images"), "--no-label")
    out = cli("upload", "--info-file", str(ex / "images" / "info.labels")).stdout
    assert "Added 0 samples, skipped 24 duplicates" in out
    assert "24 of the 24 samples already in the project differ from the file" in out and "--update-existing" in out
    assert all(not s["boundingBoxes"] for s in cli.json("samples", "list"))  # nothing written
    doc = cli.json("upload", "--info-file", str(ex / "images" / "info.labels"), "--update-existing")
    staged = doc["existingSamples"]
    assert staged["differing"] == 24 and staged["existing"] == 24
    job = staged["jobId"]
    total = cli.json("proposals", "show", str(job))["total"]
    cli("proposals", "apply", str(job))
    listed = cli.json("samples", "list")
    assert sum(len(s["boundingBoxes"]) for s in listed) == total["boxesAdded"] > 0
    assert all(s["label"] and s["metadata"].get("site") for s in listed)
    # the file again: nothing differs
    again = cli.json("upload", "--info-file", str(ex / "images" / "info.labels"))
    assert again["existingSamples"]["differing"] == 0


def test_coco_and_yolo_exports_say_what_they_cannot_hold(example: tuple[Cli, Path], tmp_path: Path) -> None:
    cli, ex = example
    cli("upload", "--info-file", str(ex / "images" / "info.labels"))
    cli("upload", str(ex / "audio"), "--no-label")
    for fmt in ("coco", "yolo"):
        out = cli("export", str(tmp_path / f"out-{fmt}"), "--format", fmt).stdout
        assert "Exported 24 samples" in out
        assert f"6 audio samples not exported: {fmt.upper()} holds images only" in out
        doc = cli.json("export", str(tmp_path / f"out2-{fmt}"), "--format", fmt)
        assert doc["notExported"]["count"] == 6 and len(doc["notExported"]["sampleIds"]) == 6
    assert "notExported" not in cli.json("export", str(tmp_path / "all"))


def test_sync_remembers_a_sources_metadata(cli: Cli, tmp_path: Path) -> None:
    src = tmp_path / "src"
    for i in range(2):
        make_image(src / f"a{i}.png", seed=i)
    cli("sync", str(src), "--metadata", "site=X")
    make_image(src / "later.png", seed=9)
    assert cli.json("sync", str(src))["added"] == 1
    assert {s["metadata"].get("site") for s in cli.json("samples", "list")} == {"X"}
    [listed] = cli.json("sync", "--list")
    assert listed["metadata"] == {"site": "X"}
    assert "site=X" in cli("sync", "--list").stdout
    # a new value for a key replaces the remembered one for files added from then on
    cli("sync", str(src), "--metadata", "site=Y")
    make_image(src / "latest.png", seed=10)
    cli("sync", str(src))
    by_name = {s["filename"]: s["metadata"]["site"] for s in cli.json("samples", "list")}
    assert by_name["latest.png"] == "Y" and by_name["later.png"] == "X"


def test_samples_delete_and_disable_take_filters(six: Cli) -> None:
    cli = six
    cli("metadata", "set", "1-3", "site=A")
    assert cli.json("samples", "disable", "--where", "site=A")["disabled"] == 3
    assert {s["id"] for s in cli.json("samples", "list", "--include-disabled") if s["isDisabled"]} == {1, 2, 3}
    assert cli.json("samples", "enable", "--where", "site=A", "--label", "nothing")["enabled"] == 0
    cli("samples", "enable", "2", "--where", "site=A")  # ids and filters: the ids that match
    assert {s["id"] for s in cli.json("samples", "list", "--include-disabled") if s["isDisabled"]} == {1, 3}
    refused = cli("samples", "delete", "--where", "site=A", expect=1, input="n\n")
    assert "Delete 3 samples" in refused.output and cli.json("samples", "list", "--count", "--include-disabled")["count"] == 6
    assert "Aborted" in cli("samples", "delete", "--where", "site=A", expect=1).output  # no answer: nothing
    cli("samples", "delete", "--where", "site=A", input="y\n")
    assert cli.json("samples", "list", "--count", "--include-disabled")["count"] == 3
    assert cli.json("samples", "delete", "--where-not", "site=A", "--yes")["deleted"] == 3
    assert "which samples?" in cli("samples", "delete", expect=2).output


def test_a_renaming_action_has_nothing_to_tune(example: tuple[Cli, Path]) -> None:
    cli, ex = example
    cli("upload", "--info-file", str(ex / "images" / "info.labels"))
    cli("actions", "create", "r", "--step", "relabel", "-p", "mapping=square -> box")
    job = cli.json("actions", "preview", "r", "--limit", "24")["jobId"]
    doc = cli.json("evaluate", str(job))
    assert doc["thresholds"] == [] and "nothing to tune" in doc["thresholdsNote"]
    out = cli("evaluate", str(job)).stdout
    assert "nothing to tune" in out and "owlvit" not in out and "now 1.000" not in out


def test_demo_keeps_a_changed_demo_unless_forced(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from click.testing import CliRunner

    from labelblocks.cli import main

    monkeypatch.chdir(tmp_path)
    run = CliRunner().invoke
    assert run(main, ["demo", "--json"]).exit_code == 0
    assert run(main, ["demo", "--json"]).exit_code == 0  # unchanged: replaced
    demo = tmp_path / "labelblocks-demo"
    assert run(main, ["--project", str(demo), "metadata", "set", "1", "mine=yes"]).exit_code == 0
    refused = run(main, ["demo"])
    assert refused.exit_code == 1 and "--force" in refused.output
    assert run(main, ["--project", str(demo), "samples", "show", "1", "--json"]).output.count("mine") == 1
    assert run(main, ["demo", "--force", "--json"]).exit_code == 0
    assert "mine" not in run(main, ["--project", str(demo), "samples", "show", "1", "--json"]).output
