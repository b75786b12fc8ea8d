"""`labelblocks evaluate`, through the real CLI: a job's proposed labels against the truth,
checked against scikit-learn called here on the same pairs, grouped by metadata, in the
protocol's block-metadata shape (its bindings read it)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

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

    def f1_at(threshold: float, strict: bool = False) -> float:  # brute force: a kept box is right within 1 px
        kept = [(sid, b) for sid, bs in found.items() for b in bs
                if (b["score"] > threshold if strict else b["score"] >= threshold)]
        tp = sum(1 for sid, b in kept if truth[sid] and abs(b["x"] - truth[sid][0]["x"]) <= 1)
        p, r = tp / len(kept), tp / 3
        return 2 * p * r / (p + r) if p + r else 0.0

    scores = sorted(b["score"] for bs in found.values() for b in bs)
    best = max(scores, key=lambda s: (f1_at(s), -s))
    # the best score is 0.6; the suggestion lies halfway to the next lower one (0.3), so that a
    # block keeping scores above it and one keeping scores at or above it keep the same boxes
    assert best == 0.6 and t["key"] == "cat" and t["suggestedValue"] == 0.45
    assert f1_at(0.45) == f1_at(0.45, strict=True) == f1_at(best) == max(f1_at(s) for s in scores)
    assert "F1 0.67" in t["suggestedValueText"] and t["targetPrecisionValue"] == 0.8 and t["value"] == 0.3
    text = cli("evaluate", str(job), "--target-precision", "0.9").stdout
    assert "suggested score thresholds" in text and "precision 0.90 from 0.800" in text and "actions set" in text


def _reference_match(truth: list[tuple], pred: list[tuple], iou: float, same_class: bool) -> dict[int, int]:
    """One image, matched the plain way (COCO's loop): predictions by descending score (stable),
    each to the free true box of largest IoU >= iou, the later one among equals.
    Boxes are (label, x, y, w, h[, score]); returns {prediction index: truth index}."""
    def iou_of(a: tuple, b: tuple) -> float:
        ix = max(0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
        iy = max(0, min(a[2] + a[4], b[2] + b[4]) - max(a[2], b[2]))
        union = a[3] * a[4] + b[3] * b[4] - ix * iy
        return ix * iy / union if union else 0.0

    free, out = set(range(len(truth))), {}
    for i in sorted(range(len(pred)), key=lambda i: -pred[i][5]):
        best, best_iou = None, iou
        for t in sorted(free):
            v = iou_of(truth[t], pred[i])
            if v >= best_iou and (not same_class or truth[t][0] == pred[i][0]):
                best, best_iou = t, v
        if best is not None:
            free.discard(best)
            out[i] = best
    return out


def _random_images(rng: np.random.Generator, n: int, most: int = 4) -> tuple[list[list[tuple]], list[list[tuple]]]:
    truth, pred = [], []
    for _ in range(n):
        t = [(str(rng.choice(["a", "b"])), *(int(v) for v in rng.integers(0, 60, 2)), int(rng.integers(5, 40)),
              int(rng.integers(5, 40))) for _ in range(int(rng.integers(0, most)))]
        p = [(b[0] if rng.random() < 0.8 else "b", b[1] + int(rng.integers(0, 5)), b[2], b[3], b[4],
              round(float(rng.random()), 2)) for b in t if rng.random() < 0.8]
        p += [(str(rng.choice(["a", "b"])), *(int(v) for v in rng.integers(0, 60, 2)), int(rng.integers(5, 40)),
               int(rng.integers(5, 40)), round(float(rng.random()), 2)) for _ in range(int(rng.integers(0, 3)))]
        truth.append(t)
        pred.append(p)
    return truth, pred


def _columns(images: list[list[tuple]]) -> Any:
    from labelblocks.evaluate import Boxes

    return Boxes.of([[{"label": b[0], "x": b[1], "y": b[2], "width": b[3], "height": b[4],
                       **({"score": b[5]} if len(b) > 5 else {})} for b in bs] for bs in images], {"a": 0, "b": 1})


@pytest.mark.parametrize("seed", range(4))
def test_bulk_matching_equals_matching_each_image(seed: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """The matching of all images at once (in rounds, in chunks) equals the plain loop per image."""
    from labelblocks import evaluate
    from labelblocks.evaluate import boxes

    monkeypatch.setattr(boxes, "MAX_PAIRS", 50)  # many chunks
    truth, pred = _random_images(np.random.default_rng(seed), 60, most=8)
    t, p = _columns(truth), _columns(pred)
    for same_class in (False, True):
        for iou in (0.3, 0.5, 0.9):
            got = evaluate.match(t, p, iou, same_class)
            t_base = np.concatenate(([0], np.cumsum([len(x) for x in truth])))
            p_base = np.concatenate(([0], np.cumsum([len(x) for x in pred])))
            for i in range(len(truth)):
                ref = _reference_match(truth[i], pred[i], iou, same_class)
                mine = {k: int(got[p_base[i] + k] - t_base[i]) for k in range(len(pred[i])) if got[p_base[i] + k] >= 0}
                assert mine == ref, (i, iou, same_class)


@pytest.mark.parametrize("seed", range(4))
def test_the_threshold_sweep_equals_rematching_at_every_threshold(seed: int) -> None:
    """One matching per class, swept over the scores, gives what matching again at every
    threshold gives (random images, boxes and scores; near misses included)."""
    from labelblocks.evaluate import box_thresholds

    rng = np.random.default_rng(seed)
    truth, pred = _random_images(rng, 30)
    near = [[(b[0], b[1], b[2], b[3], b[4], round(b[5] / 4, 3)) for b in _random_images(rng, 1)[1][0]] for _ in truth]
    got, curves = box_thresholds(_columns(truth), _columns(pred), _columns(near), ["a", "b"], 0.5,
                                 target_precision=0.8)
    got_by = {t["key"]: t for t in got}
    for label in ("a", "b"):
        everything = [[b for b in p + n if b[0] == label] for p, n in zip(pred, near, strict=True)]
        scores = sorted({b[5] for bs in everything for b in bs})
        rows = []
        for th in scores:  # match again with only the predictions kept at th
            tp = kept = n_true = 0
            for t, bs in zip(truth, everything, strict=True):
                t = [b for b in t if b[0] == label]
                ps = [b for b in bs if b[5] >= th]
                tp += len(_reference_match(t, ps, 0.5, True))
                kept += len(ps)
                n_true += len(t)
            pr, rc = tp / kept, tp / n_true
            rows.append((th, 2 * pr * rc / (pr + rc) if pr + rc else 0.0, pr))
        best = max(rows, key=lambda row: (row[1], -row[0]))
        def lower(score: float, scores: list[float] = scores) -> float:  # the next lower recorded score
            return max((x for x in scores if x < score), default=score - 2e-4)

        assert lower(best[0]) < got_by[label]["suggestedValue"] < best[0]
        reach = next((th for th, _, pr in rows if pr >= 0.8), None)
        assert (reach is None) == (got_by[label]["targetPrecisionValue"] is None)
        if reach is not None:
            assert lower(reach) < got_by[label]["targetPrecisionValue"] < reach
        curve = next(c for c in curves if c.key == label)
        assert curve.thresholds == scores and curve.suggested == best[0]


@pytest.mark.parametrize("seed", range(3))
def test_map50_equals_coco_and_its_interval_holds_it(seed: int) -> None:
    """The mAP@50 the group intervals resample is COCO's mAP@50 (faster-coco-eval called here)."""
    from labelblocks.evaluate import Map50, match

    truth, pred = _random_images(np.random.default_rng(seed), 40)
    t, p = _columns(truth), _columns(pred)
    m50 = Map50(t, p, match(t, p, 0.5, same_class=True), 2, np.arange(len(truth)))
    as_dicts = {i + 1: [{"label": b[0], "x": b[1], "y": b[2], "width": b[3], "height": b[4]} for b in bs]
                for i, bs in enumerate(truth)}
    predicted = {i + 1: [{"label": b[0], "x": b[1], "y": b[2], "width": b[3], "height": b[4], "score": b[5]}
                         for b in bs] for i, bs in enumerate(pred)}
    reference = _coco_reference(as_dicts, predicted, (100, 100), ["a", "b"])
    assert m50.value() == pytest.approx(reference[1], abs=1e-9)
    lo, hi = m50.interval()
    assert 0 <= lo <= m50.value() <= hi <= 1 and hi > lo


def test_near_misses_reach_under_the_blocks_threshold(cli: Cli, tmp_path: Path) -> None:
    """A block's recorded near misses (scored under its threshold) take part in the threshold
    sweep, not in the metrics: the suggestion can be lower than the block's threshold."""
    for name in "abc":
        make_image(tmp_path / "n" / f"{name}.png", seed=ord(name))  # 64 x 48
    cli("upload", str(tmp_path / "n"), "--no-label")
    ids = {s["filename"][0]: s["id"] for s in cli.json("samples", "list")}
    cat = {"label": "cat", "width": 20, "height": 20}
    cli("samples", "label", str(ids["a"]), "--boxes", json.dumps([{**cat, "x": 5, "y": 5}]))
    cli("samples", "label", str(ids["b"]), "--boxes", json.dumps([{**cat, "x": 30, "y": 20}]))
    plan = {"a": [{**cat, "x": 6, "y": 5, "score": 0.45}],                                  # right, under 0.5
            "b": [{**cat, "x": 30, "y": 21, "score": 0.8}],                                 # right
            "c": [{**cat, "x": 0, "y": 0, "score": 0.7}, {**cat, "x": 10, "y": 10, "score": 0.3}]}  # wrong
    cli("actions", "create", "det", "--step", "fake-detector", "-p", f"plan={json.dumps(plan)}")
    job = cli.json("actions", "preview", "det")["jobId"]
    doc = cli.json("evaluate", str(job))
    item = doc["modelValidationMetrics"][0]
    # the metrics see the proposed boxes only: b's is right, c's 0.7 is a false box, a's cat is missed
    assert item["confusionMatrix"] == [[1, 1], [1, 0]]
    [t] = doc["thresholds"]
    # by hand over 0.8 (right), 0.7 (wrong), 0.45 (right), 0.3 (wrong), 2 true cats:
    # F1 at 0.3: 0.67, at 0.45: 0.8, at 0.7: 0.5, at 0.8: 0.67; halfway from 0.45 to 0.3
    assert t["suggestedValue"] == 0.375 and "F1 0.80" in t["suggestedValueText"] and t["value"] == 0.7
    assert (t["scores"], t["nearMisses"]) == (4, 2) and "command" not in t  # the block names no parameter for it
    assert "suggests no change to action det" in cli("actions", "set", "det", "--suggested").stdout
    cli("actions", "create", "other", "--step", "fake-detector")
    assert "no job of action other has been evaluated" in cli("actions", "set", "other", "--suggested",
                                                              expect=2).output
    assert "without --step" in cli("actions", "set", "det", "--suggested", "--step", "1", expect=2).output


def test_audio_segments_against_overlapping_truth(cli: Cli, tmp_path: Path) -> None:
    """Segments are compared over time, from their overlaps; scikit-learn, called here on
    one row per value, agrees; the window scores suggest a min-confidence."""
    from .conftest import make_audio

    make_audio(tmp_path / "au" / "a.wav", seconds=4.0, rate=1000)
    make_audio(tmp_path / "au" / "b.wav", seconds=2.0, rate=1000, seed=1)
    cli("upload", str(tmp_path / "au"), "--no-label")
    ids = {s["filename"][0]: s["id"] for s in cli.json("samples", "list")}
    truth = {"a": [("speech", 0, 1399), ("dog", 1400, 3999)], "b": [("speech", 0, 999)]}  # b's second half: no truth
    for name, segs in truth.items():
        cli("samples", "label", str(ids[name]), "--structured-labels",
            json.dumps([{"startIndex": a, "endIndex": b, "label": lab} for lab, a, b in segs]))
        cli("metadata", "set", "--ids", str(ids[name]), f"site={name.upper()}")
    plan = {"a": [["speech", 0.9], ["speech", 0.4], ["dog", 0.8], ["dog", 0.65]], "b": [["speech", 0.7], ["dog", 0.3]]}
    cli("actions", "create", "tag", "--step", "fake-tagger", "-p", f"plan={json.dumps(plan)}")
    job = cli.json("actions", "preview", "tag")["jobId"]
    doc = cli.json("evaluate", str(job), "--group-by", "site", "--target-precision", "1")
    item = doc["modelValidationMetrics"][0]
    assert doc["task"] == "segments" and doc["classes"] == ["dog", "other", "speech"]
    # by hand: a: speech 0-999 right (1.0 s), 1000-1399 speech->other (0.4 s), 1400-1999 dog->other (0.6 s),
    # dog 2000-3999 right (2.0 s); b: speech 0-999 right (1.0 s), 1000-1999 has no truth
    assert item["accuracy"] == pytest.approx(4.0 / 5.0)
    assert item["confusionMatrix"] == [[2.0, 0.6, 0.0], [0.0, 0.0, 0.0], [0.0, 0.4, 2.0]]
    per_value_truth, per_value_pred = [], []  # the reference: one row per value, by window
    windows = {"a": ["speech", "other", "dog", "dog"], "b": ["speech", "other"]}
    for name, segs in truth.items():
        for lab, a, b in segs:
            for v in range(a, b + 1):
                per_value_truth.append(lab)
                per_value_pred.append(windows[name][v // 1000])
    assert item["accuracy"] == pytest.approx(accuracy_score(per_value_truth, per_value_pred))
    ref = confusion_matrix(per_value_truth, per_value_pred, labels=doc["classes"]) / 1000
    assert np.allclose(item["confusionMatrix"], ref)
    ref_report = classification_report(per_value_truth, per_value_pred, labels=doc["classes"], output_dict=True,
                                       zero_division=0)
    for c in doc["classes"]:
        assert item["report"][c]["f1-score"] == pytest.approx(ref_report[c]["f1-score"])
    ei.models.KerasModelMetadataMetrics.from_dict(item)
    pieces = [(p["sampleId"], p["startMs"], p["endMs"], p["label"], p["prediction"]) for p in item["predictions"]]
    assert (ids["a"], 1000.0, 1400.0, "speech", "other") in pieces
    [g] = doc["groups"]
    assert [(v["value"], round(v["accuracy"], 3)) for v in g["values"]] == [("A", 0.75), ("B", 1.0)]
    for v in g["values"]:
        lo, hi = v["macroF1Interval"]
        assert 0 <= lo <= v["macroF1"] + 1e-9 and v["macroF1"] - 1e-9 <= hi <= 1
    # windows with truth: 0.9 right, 0.4 wrong (its truth is mostly dog), 0.8, 0.65, 0.7 right; 5 positives:
    # the best keeps 0.65 and up (F1 0.89, precision 1): halfway to 0.4
    [t] = doc["thresholds"]
    assert (t["key"], t["value"], t["suggestedValue"], t["targetPrecisionValue"]) == ("min-confidence", 0.5, 0.525,
                                                                                       0.525)
    assert t["command"] == "labelblocks actions set tag --step 1 -p min-confidence=0.525"
    out = cli("evaluate", str(job)).stdout
    assert "accuracy over time 80.0%" in out and t["command"] in out
    cli(*t["command"].split()[1:])
    assert cli.json("actions", "show", "tag")["steps"][0]["parameters"]["min-confidence"] == "0.525"


def test_report_draws_the_evaluation(cli: Cli, tmp_path: Path) -> None:
    from PIL import Image

    for i in range(4):
        make_image(tmp_path / "r" / f"img.{i}.png", seed=i)
    cli("upload", str(tmp_path / "r"), "--no-label")
    for sid in range(1, 5):
        cli("samples", "label", str(sid), "--boxes",
            json.dumps([{"label": "cat", "x": 1 + sid, "y": 1, "width": 31, "height": 23}]))
        cli("metadata", "set", "--ids", str(sid), f"site={'A' if sid < 3 else 'B'}")
    cli("actions", "create", "detect", "--step", "fake-boxer", "-p", "label=cat")
    job = cli.json("actions", "preview", "detect")["jobId"]
    out = tmp_path / "report"
    text = cli("evaluate", str(job), "--group-by", "site", "--report", str(out), "--iou", "0.9").stdout
    index = out / "index.html"
    assert f"Report: {index}" in text
    page = index.read_text()
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert "confusion.png" in pngs and "group-1.png" in pngs and "pr-1.png" in pngs
    worst = [p for p in pngs if p.startswith("worst-")]
    assert worst  # at IoU 0.9 the shifted boxes miss: every image is imperfect
    for name in pngs:
        with Image.open(out / name) as im:
            im.verify()
    assert page.count("data:image/png;base64,") == len(pngs) and "http" not in page.replace(
        'content="labelblocks', "")  # self-contained: nothing fetched from elsewhere
    assert "By site" in page and "worst samples" in page and "Score thresholds" in page
    # a second report replaces the first; a folder of something else is refused
    cli("evaluate", str(job), "--report", str(out))
    assert not (out / "group-1.png").exists()
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    r = cli("evaluate", str(job), "--report", str(tmp_path / "other"), expect=1)
    assert "neither empty nor an earlier report" in r.output and (tmp_path / "other" / "notes.txt").exists()
