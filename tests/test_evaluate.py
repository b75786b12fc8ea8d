"""`labelblocks evaluate`, through the real CLI: a job's proposed labels against the truth,
checked against scikit-learn called here on the same pairs, grouped by metadata, in the
protocol's block-metadata shape (its bindings read it)."""

from __future__ import annotations

from pathlib import Path

import edgeimpulse_api as ei
import numpy as np
import pytest
from sklearn.metrics import accuracy_score, classification_report, confusion_matrix

from .conftest import Cli, make_image


@pytest.fixture
def evaluated(cli: Cli, tmp_path: Path) -> tuple[Cli, int, list[tuple[str, str, str]]]:
    """9 images (3 cat, 3 dog, 3 bird; ids in file-name order: birds 1-3, cats 4-6, dogs 7-9;
    site B for ids 1-3, A for the rest); a preview that proposes cat -> dog and bird -> cat;
    then the truth of one dog becomes bird (no proposal for it: predicted as it is) and of one
    bird dog (its proposal says cat). Returns the job and (truth, prediction, site) per sample."""
    for i, name in enumerate(["cat"] * 3 + ["dog"] * 3 + ["bird"] * 3):
        make_image(tmp_path / "x" / f"{name}.{i}.png", seed=i)
    cli("upload", str(tmp_path / "x"))
    for sid in range(1, 10):
        cli("metadata", "set", "--ids", str(sid), f"site={'B' if sid <= 3 else 'A'}", "reviewed=yes")
    cli("actions", "create", "guess", "--step", "relabel", "-p", "mapping=cat -> dog\nbird -> cat")
    job = cli.json("actions", "preview", "guess", "--limit", "9")["jobId"]
    names = {s["id"]: s["filename"] for s in cli.json("samples", "list")}
    dog, bird = (next(i for i, n in sorted(names.items()) if n.startswith(k)) for k in ("dog", "bird"))
    cli("samples", "label", str(dog), "--label", "bird")
    cli("samples", "label", str(bird), "--label", "dog")
    expected = []
    for s in cli.json("samples", "list"):
        truth = s["label"]
        stem = s["filename"].split(".")[0]
        prediction = {"cat": "dog", "bird": "cat"}.get(stem, truth)
        expected.append((truth, prediction, s["metadata"]["site"]))
    return cli, job, expected


def test_single_label_metrics_match_scikit_learn(evaluated: tuple[Cli, int, list[tuple[str, str, str]]]) -> None:
    cli, job, expected = evaluated
    doc = cli.json("evaluate", str(job))
    truth, pred = [t for t, _, _ in expected], [p for _, p, _ in expected]
    classes = sorted(set(truth) | set(pred))
    item = doc["modelValidationMetrics"][0]
    assert doc["classes"] == classes == ["bird", "cat", "dog"] and doc["samples"] == 9
    assert item["accuracy"] == pytest.approx(accuracy_score(truth, pred)) == pytest.approx(3 / 9)
    assert item["confusionMatrix"] == confusion_matrix(truth, pred, labels=classes).tolist()
    assert item["confusionMatrix"] == [[1, 2, 0], [0, 0, 3], [0, 1, 2]]  # by hand: rows truth, columns prediction
    assert item["report"] == classification_report(truth, pred, labels=classes, output_dict=True, zero_division=0)
    ei.models.KerasModelMetadataMetrics.from_dict(item)  # the protocol's bindings read it
    assert {(p["label"], p["prediction"]) for p in item["predictions"]} == {(t, p) for t, p, _ in expected}
    text = cli("evaluate", str(job)).stdout
    assert "accuracy 33.3%" in text and "rows: truth, columns: prediction" in text and "macro avg" in text


def test_groups_worst_first_with_intervals(evaluated: tuple[Cli, int, list[tuple[str, str, str]]]) -> None:
    cli, job, expected = evaluated
    doc = cli.json("evaluate", str(job), "--group-by", "site", "--min-group", "5")
    [g] = doc["groups"]
    assert [v["value"] for v in g["values"]] == ["B", "A"]  # site B (the birds, all predicted wrong) is worse
    b, a = g["values"]
    assert (b["samples"], b["accuracy"], b["tooSmall"]) == (3, 0.0, True)
    a_pairs = [(t, p) for t, p, site in expected if site == "A"]
    assert a["accuracy"] == pytest.approx(np.mean([t == p for t, p in a_pairs])) and not a["tooSmall"]
    lo, hi = a["accuracyInterval"]
    assert 0 <= lo <= a["accuracy"] <= hi <= 1
    text = cli("evaluate", str(job), "--group-by", "site", "--min-group", "5").stdout
    assert text.index("  B ") < text.index("  A ") and "too few samples to tell" in text
    # filters pick the truth to compare with; samples without the key form their own group
    cli("metadata", "unset", "--ids", "9", "site")
    doc = cli.json("evaluate", str(job), "--where", "reviewed=yes", "--group-by", "site")
    assert "(no value)" in [v["value"] for v in doc["groups"][0]["values"]]


def test_against_another_job(evaluated: tuple[Cli, int, list[tuple[str, str, str]]]) -> None:
    cli, job, _ = evaluated
    cli("actions", "create", "same", "--step", "relabel", "-p", "mapping=cat -> dog\nbird -> cat")
    other = cli.json("actions", "preview", "same", "--limit", "9")["jobId"]
    doc = cli.json("evaluate", str(job), "--against-job", str(other))
    # the same mapping, previewed after the two labels changed: those two samples differ (the
    # dog now labeled bird is mapped to cat; the bird now labeled dog is left a dog)
    assert doc["modelValidationMetrics"][0]["accuracy"] == pytest.approx(7 / 9)
    assert doc["comparedWith"] == f"job {other}'s proposals"


def test_bad_input_is_one_line(evaluated: tuple[Cli, int, list[tuple[str, str, str]]]) -> None:
    cli, job, _ = evaluated
    for args, message in ((["99"], "no job 99"), ([str(job), "--group-by", "nope"], "no evaluated sample has"),
                          ([str(job), "--where", "site=Mars"], "none of job"),
                          ([str(job), "--against-job", "42"], "no job 42")):
        r = cli("evaluate", *args, expect=1)
        assert message in r.output and r.output.count("\n") == 1, r.output
    cli("actions", "create", "broken", "--step", "fake-fail", "-p", "fail-ids=1,2")  # every sample fails
    empty = cli.json("actions", "preview", "broken", "--ids", "1,2", expect=1)["jobId"]
    assert "has no proposals" in cli("evaluate", str(empty), expect=1).output


def test_actions_evaluate_previews_labeled_samples_and_evaluates(
        evaluated: tuple[Cli, int, list[tuple[str, str, str]]], tmp_path: Path) -> None:
    cli, _, _ = evaluated
    make_image(tmp_path / "y" / "unlabeled.png", seed=50)
    cli("upload", str(tmp_path / "y"), "--no-label")  # not labeled: nothing to compare it with
    doc = cli.json("actions", "evaluate", "guess", "--group-by", "site")
    # previewed now, on the current labels: 2 dogs and the bird relabeled dog are right
    assert doc["samples"] == 9 and doc["modelValidationMetrics"][0]["accuracy"] == pytest.approx(3 / 9)
    values = doc["groups"][0]["values"]
    assert [(v["accuracy"], v["value"]) for v in values] == sorted((v["accuracy"], v["value"]) for v in values)
    assert sum(v["samples"] for v in values) == 9
    assert cli.json("actions", "evaluate", "guess", "--limit", "4")["samples"] == 4
    site_b = [s for s in cli.json("samples", "list") if s["metadata"].get("site") == "B"]
    right = sum({"cat": "dog", "bird": "cat"}.get(s["label"], s["label"]) == s["label"] for s in site_b)
    out = cli("actions", "evaluate", "guess", "--where", "site=B").stdout
    assert f"{len(site_b)} labeled samples" in out and f"accuracy {right / len(site_b):.1%}" in out
    r = cli("actions", "evaluate", "guess", "--where", "site=Mars", expect=2)
    assert "no labeled samples matching the filters" in r.output


def test_the_evaluation_is_stored_and_served(evaluated: tuple[Cli, int, list[tuple[str, str, str]]],
                                             project: Path) -> None:
    import requests

    from labelblocks.server import BackgroundServer, JobScope

    cli, job, _ = evaluated
    key = cli.json("keys", "create")["key"]
    printed = cli.json("evaluate", str(job), "--group-by", "site")
    cli("evaluate", str(job), "--group-by", "nope", expect=1)  # refused: the stored one stays
    with BackgroundServer(project) as srv:
        r = requests.get(f"{srv.url}/api/1/jobs/{job}/evaluation", headers={"x-api-key": key}, timeout=30)
        assert r.status_code == 200
        doc = r.json()
        assert doc["success"] is True and doc["created"] and doc["thresholds"] == []
        assert doc["modelValidationMetrics"] == printed["modelValidationMetrics"] and doc["groups"] == printed["groups"]
        for item in doc["modelValidationMetrics"]:
            ei.models.KerasModelMetadataMetrics.from_dict(item)
        missing = requests.get(f"{srv.url}/api/1/jobs/{job + 100}/evaluation", headers={"x-api-key": key}, timeout=30)
        assert missing.status_code == 404 and "labelblocks evaluate" in missing.json()["error"]
        other = srv.state.add_job_key(JobScope(job_id=job + 1, step=1, sample_ids=frozenset({1})))
        denied = requests.get(f"{srv.url}/api/1/jobs/{job}/evaluation", headers={"x-api-key": other}, timeout=30)
        assert denied.status_code == 403


def test_actions_set_changes_one_steps_parameters(cli: Cli) -> None:
    cli("actions", "create", "two", "--step", "relabel", "-p", "mapping=a -> b", "--step", "relabel")
    out = cli("actions", "set", "two", "--step", "2", "-p", "mapping=b -> c", "-p", "min-box-area=2").stdout
    assert "step 2 (relabel)" in out
    steps = cli.json("actions", "show", "two")["steps"]
    assert steps[0]["parameters"] == {"mapping": "a -> b"}
    assert steps[1]["parameters"] == {"mapping": "b -> c", "min-box-area": "2"}
    cli("actions", "set", "two", "--step", "2", "--unset", "min-box-area")
    assert cli.json("actions", "show", "two")["steps"][1]["parameters"] == {"mapping": "b -> c"}
    assert "unknown parameter 'nope'" in cli("actions", "set", "two", "--step", "1", "-p", "nope=1", expect=1).output
    assert "has 2 steps, not 3" in cli("actions", "set", "two", "--step", "3", "-p", "mapping=x", expect=2).output
    assert cli.json("actions", "show", "two")["steps"][0]["parameters"] == {"mapping": "a -> b"}  # unchanged


def _coco_reference(truth: dict[int, list[dict]], predicted: dict[int, list[dict]], size: tuple[int, int],
                    classes: list[str]) -> list[float]:
    """faster-coco-eval called directly on the same boxes: the reference for the figures."""
    from faster_coco_eval import COCO, COCOeval_faster

    cat = {c: i + 1 for i, c in enumerate(classes)}
    gt = COCO()
    anns = [{"id": n + 1, "image_id": img, "category_id": cat[b["label"]], "iscrowd": 0,
             "bbox": [b["x"], b["y"], b["width"], b["height"]], "area": b["width"] * b["height"]}
            for n, (img, b) in enumerate((i, b) for i, bs in truth.items() for b in bs)]
    gt.dataset = {"images": [{"id": i, "width": size[0], "height": size[1]} for i in truth], "annotations": anns,
                  "categories": [{"id": v, "name": k} for k, v in cat.items()]}
    gt.createIndex()
    dets = [{"image_id": i, "category_id": cat[b["label"]], "bbox": [b["x"], b["y"], b["width"], b["height"]],
             "score": b["score"]} for i, bs in predicted.items() for b in bs]
    e = COCOeval_faster(gt, gt.loadRes(dets), "bbox", print_function=lambda *a, **k: None)
    e.evaluate()
    e.accumulate()
    e.summarize()
    return [max(0.0, float(v)) for v in e.stats[:12]]


def test_boxes_known_matches_at_two_iou_thresholds(cli: Cli, tmp_path: Path) -> None:
    import json

    for i in range(4):
        make_image(tmp_path / "b" / f"img.{i}.png", seed=i)  # 64 x 48
    cli("upload", str(tmp_path / "b"), "--no-label")
    truth = {1: [{"label": "cat", "x": 2, "y": 2, "width": 30, "height": 22}],   # IoU 0.86 with the prediction
             2: [{"label": "cat", "x": 30, "y": 20, "width": 30, "height": 25}],  # far: a miss and a false box
             3: [],                                                               # nothing: a false box
             4: [{"label": "dog", "x": 1, "y": 1, "width": 31, "height": 23}]}    # IoU 0.93, the wrong class
    for sid, boxes in truth.items():
        if boxes:
            cli("samples", "label", str(sid), "--boxes", json.dumps(boxes))
    cli("actions", "create", "detect", "--step", "fake-boxer", "-p", "label=cat")  # adds (0, 0, 32, 24), score 0.75
    job = cli.json("actions", "preview", "detect", "--limit", "4")["jobId"]
    at50 = cli.json("evaluate", str(job), "--iou", "0.5")
    item = at50["modelValidationMetrics"][0]
    assert at50["task"] == "boxes" and at50["classes"] == ["cat", "dog", "background"]
    assert item["confusionMatrix"] == [[1, 0, 1], [1, 0, 0], [2, 0, 0]]  # rows truth, columns prediction
    assert item["report"]["cat"]["precision"] == pytest.approx(1 / 4) and item["report"]["cat"]["recall"] == 0.5
    at90 = cli.json("evaluate", str(job), "--iou", "0.9")["modelValidationMetrics"][0]
    assert at90["confusionMatrix"] == [[0, 0, 2], [1, 0, 0], [3, 0, 0]]
    predicted = {sid: [{"label": "cat", "x": 0, "y": 0, "width": 32, "height": 24, "score": 0.75}] for sid in truth}
    reference = _coco_reference(truth, predicted, (64, 48), ["cat", "dog"])
    figures = [m["fullPrecisionValue"] for m in item["additionalMetrics"]]
    assert figures == pytest.approx(reference) and item["accuracy"] == pytest.approx(reference[1])
    ei.models.KerasModelMetadataMetrics.from_dict(item)
    assert item["predictions"][0]["boundingBoxes"][0] == {"label": "cat", "x": 0.0, "y": 0.0, "width": 0.5,
                                                          "height": 0.5, "score": 0.75}
    assert "mAP@50" in cli("evaluate", str(job)).stdout
    assert "--iou: expected a number in (0, 1]" in cli("evaluate", str(job), "--iou", "1.5", expect=1).output
    assert "no job 42" in cli("evaluate", str(job), "--against-job", "42", expect=1).output


def test_suggested_thresholds_equal_a_brute_force_search(cli: Cli, tmp_path: Path, project: Path) -> None:
    import json

    import requests

    from labelblocks.server import BackgroundServer

    for i in range(4):
        make_image(tmp_path / "t" / f"img.{i}.png", seed=i)  # 64 x 48
    cli("upload", str(tmp_path / "t"), "--no-label")
    cat = {"label": "cat", "width": 20, "height": 20}
    truth = {1: [{**cat, "x": 5, "y": 5}], 2: [{**cat, "x": 30, "y": 20}], 3: [], 4: [{**cat, "x": 40, "y": 25}]}
    for sid, boxes in truth.items():
        if boxes:
            cli("samples", "label", str(sid), "--boxes", json.dumps(boxes))
    # the detector's boxes, with scores: two right (0.9, 0.6), two wrong (0.7, 0.3), one cat missed
    found = {1: [{**cat, "x": 6, "y": 5, "score": 0.9}], 2: [{**cat, "x": 30, "y": 21, "score": 0.6}],
             3: [{**cat, "x": 0, "y": 0, "score": 0.7}], 4: [{**cat, "x": 0, "y": 0, "score": 0.3}]}
    cli("actions", "create", "noop", "--step", "relabel", "-p", "mapping=zebra -> horse")
    job = cli.json("actions", "preview", "noop", "--limit", "4")["jobId"]
    key = cli.json("keys", "create")["key"]
    with BackgroundServer(project) as srv:
        for sid in truth:
            r = requests.post(f"{srv.url}/api/1/raw-data/{sid}/propose-changes", headers={"x-api-key": key}, timeout=30,
                              json={"jobId": job, "proposedChanges": {"boundingBoxes": truth[sid] + found[sid]}})
            assert r.status_code == 200, r.text
    doc = cli.json("evaluate", str(job), "--target-precision", "0.9")
    [t] = doc["thresholds"]

    def f1_at(threshold: float) -> float:  # brute force, by hand: a kept box is right when it is within 1 px
        kept = [(sid, b) for sid, bs in found.items() for b in bs if b["score"] >= threshold]
        tp = sum(1 for sid, b in kept if truth[sid] and abs(b["x"] - truth[sid][0]["x"]) <= 1)
        p, r = tp / len(kept), tp / 3
        return 2 * p * r / (p + r) if p + r else 0.0

    scores = sorted(b["score"] for bs in found.values() for b in bs)
    best = max(scores, key=lambda s: (f1_at(s), -s))
    assert t["key"] == "cat" and t["suggestedValue"] == best == 0.6
    assert "F1 0.67" in t["suggestedValueText"] and t["targetPrecisionValue"] == 0.9 and t["value"] == 0.3
    text = cli("evaluate", str(job), "--target-precision", "0.9").stdout
    assert "suggested score thresholds" in text and "precision 0.90 from 0.900" in text and "actions set" in text


@pytest.mark.parametrize("seed", range(5))
def test_the_threshold_sweep_equals_rematching_at_every_threshold(seed: int) -> None:
    """One matching per class, swept over the scores, gives what matching again at every
    threshold gives (random images, boxes and scores)."""
    from labelblocks.evaluate import BoxPair, match, suggest_thresholds
    from labelblocks.model import BoundingBox, Sample

    rng = np.random.default_rng(seed)

    def box(label: str, score: float | None = None) -> BoundingBox:
        x, y = (int(v) for v in rng.integers(0, 60, 2))
        return BoundingBox(label=label, x=x, y=y, width=int(rng.integers(5, 40)), height=int(rng.integers(5, 40)),
                           score=score)

    bps = []
    for i in range(30):
        truth = [box(str(rng.choice(["a", "b"]))) for _ in range(int(rng.integers(0, 4)))]
        pred = [b.model_copy(update={"x": b.x + int(rng.integers(0, 4)), "score": round(float(rng.random()), 2)})
                for b in truth if rng.random() < 0.7]
        pred += [box(str(rng.choice(["a", "b"])), round(float(rng.random()), 2)) for _ in range(int(rng.integers(0, 3)))]
        bps.append(BoxPair(Sample(id=i + 1, filename=f"{i}.png", width=100, height=100), truth, pred))
    got = {t["key"]: t for t in suggest_thresholds(bps, ["a", "b"], 0.5, target_precision=0.8)}
    for label in ("a", "b"):
        scores = sorted({b.score for bp in bps for b in bp.predicted if b.label == label})
        rows = []
        for t in scores:  # match again with only the predictions kept at t
            tp = kept = 0
            n_true = 0
            for bp in bps:
                truth = [b for b in bp.truth if b.label == label]
                pred = [b for b in bp.predicted if b.label == label and b.score >= t]
                tp += len(match(truth, pred, 0.5)[0])
                kept += len(pred)
                n_true += len(truth)
            p, r = tp / kept, tp / n_true
            rows.append((t, 2 * p * r / (p + r) if p + r else 0.0, p))
        best = max(rows, key=lambda row: (row[1], -row[0]))
        assert got[label]["suggestedValue"] == best[0]
        assert got[label]["targetPrecisionValue"] == next((t for t, _, p in rows if p >= 0.8), None)
