"""Evaluation benchmark.

1. Boxes: N images (default 100,000) with 10 true boxes each in the store and a preview job
   whose proposals add 10 scored boxes per image (jittered truth, misses, false positives;
   one site worse than the others). Time `labelblocks evaluate JOB --group-by site --json`
   (in-process, the real CLI) against the floor: one SQL query over the same database
   reading the same columns (width, height, true boxes, proposed boxes, site), json.loads,
   and the same COCO evaluator (faster-coco-eval) run over all images and once per site, as
   the command reports mAP overall and per site.
   Target: evaluate <= 1.5x the floor.
2. Single labels: M samples (default 1,000,000) with a label and a job proposing one. Time
   `labelblocks evaluate JOB --group-by site --json` against the floor: one SQL query and
   scikit-learn's accuracy, confusion matrix and classification report over all samples and
   per site. Target: evaluate <= 2x the floor.

Usage: python benchmarks/evaluate.py [--images 100000] [--labels 1000000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _workers import cpu_flags, insert_samples

from labelblocks.project import init_project, open_store
from labelblocks.store import jobs as job_store

CLASSES = ["car", "person", "bike", "bus", "truck"]
SITES = [f"site{i}" for i in range(10)]
W, H = 640, 480


def _insert_samples(db: Path, n: int, rows: Any) -> None:
    """Untimed: ``n`` samples straight into the store's tables, with a site each."""
    insert_samples(db, ((i, label, boxes, "0" * 64) for i, label, boxes in rows), W, H)
    con = sqlite3.connect(db)
    with con:
        con.executemany("INSERT INTO sample_metadata (sample_id, key, value) VALUES (?, 'site', ?)",
                        ((i, SITES[i % len(SITES)]) for i in range(1, n + 1)))
    con.close()


def _job(project: Path, n: int, changes: Any) -> int:
    with open_store(project) as store:
        ids = list(range(1, n + 1))
        job_id = job_store.create_job(store, "bench", "preview", {"name": "bench", "steps": []}, "0" * 64, ids)
        job_store.set_job_status(store, job_id, "completed")
    con = sqlite3.connect(project / ".labelblocks" / "project.db")
    with con:
        con.executemany("INSERT INTO proposals (job_id, sample_id, step, change, record, revision) "
                        "VALUES (?, ?, 1, ?, NULL, NULL)", ((job_id, i, c) for i, c in changes))
    con.close()
    return job_id


def seed_boxes(project: Path, n: int) -> int:
    rng = np.random.default_rng(0)

    def rows() -> Any:
        for i in range(1, n + 1):
            truth, pred = [], []
            worse = i % len(SITES) == 0
            for _ in range(10):
                w, h = int(rng.integers(20, 200)), int(rng.integers(20, 200))
                x, y = int(rng.integers(0, W - w)), int(rng.integers(0, H - h))
                c = CLASSES[int(rng.integers(0, len(CLASSES)))]
                truth.append({"label": c, "x": x, "y": y, "width": w, "height": h})
                if rng.random() < (0.4 if worse else 0.15):  # a miss: a false positive elsewhere
                    px, py = int(rng.integers(0, W - w)), int(rng.integers(0, H - h))
                else:
                    jitter = 25 if worse else 8
                    px = int(np.clip(x + rng.integers(-jitter, jitter + 1), 0, W - w))
                    py = int(np.clip(y + rng.integers(-jitter, jitter + 1), 0, H - h))
                pc = c if rng.random() < 0.9 else CLASSES[int(rng.integers(0, len(CLASSES)))]
                pred.append({"label": pc, "x": px, "y": py, "width": w, "height": h,
                             "score": round(float(rng.uniform(0.1, 1.0)), 4)})
            BOXES[i] = json.dumps({"boundingBoxes": pred})
            yield i, None, json.dumps(truth)

    BOXES: dict[int, str] = {}
    _insert_samples(project / ".labelblocks" / "project.db", n, rows())
    return _job(project, n, BOXES.items())


def seed_labels(project: Path, n: int) -> int:
    rng = np.random.default_rng(1)
    truth = rng.integers(0, len(CLASSES), n)
    worse = (np.arange(1, n + 1) % len(SITES)) == 0
    wrong = rng.random(n) < np.where(worse, 0.4, 0.1)
    pred = np.where(wrong, rng.integers(0, len(CLASSES), n), truth)
    _insert_samples(project / ".labelblocks" / "project.db", n,
                    ((i + 1, CLASSES[truth[i]], "[]") for i in range(n)))
    changes = [json.dumps({"label": c}) for c in CLASSES]
    return _job(project, n, ((i + 1, changes[pred[i]]) for i in range(n)))


def cli_evaluate(project: Path, job_id: int) -> tuple[float, dict[str, Any]]:
    from labelblocks.cli import main as cli_main

    out = io.StringIO()
    t = time.perf_counter()
    with contextlib.redirect_stdout(out):
        cli_main(["--project", str(project), "evaluate", str(job_id), "--group-by", "site", "--json"],
                 standalone_mode=False)
    return time.perf_counter() - t, json.loads(out.getvalue())


_FLOOR_SQL = """
SELECT s.id, s.width, s.height, s.label, s.bounding_boxes, p.change, m.value
FROM proposals p JOIN samples s ON s.id = p.sample_id
LEFT JOIN sample_metadata m ON m.sample_id = s.id AND m.key = 'site'
WHERE p.job_id = ?"""


def _coco(rows: list[tuple[Any, ...]]) -> float:
    """mAP@50 of ``rows`` by faster-coco-eval (all its figures computed)."""
    from faster_coco_eval import COCO, COCOeval_faster

    images, anns, dets = [], [], []
    cat = {c: i + 1 for i, c in enumerate(CLASSES)}
    for sid, width, height, truth, pred in rows:
        images.append({"id": sid, "width": width, "height": height})
        for b in truth:
            anns.append({"id": len(anns) + 1, "image_id": sid, "category_id": cat[b["label"]],
                         "bbox": [b["x"], b["y"], b["width"], b["height"]], "area": b["width"] * b["height"],
                         "iscrowd": 0})
        for b in pred:
            dets.append({"image_id": sid, "category_id": cat[b["label"]],
                         "bbox": [b["x"], b["y"], b["width"], b["height"]], "score": b["score"]})
    gt = COCO()
    gt.dataset = {"images": images, "annotations": anns, "categories": [{"id": i, "name": c} for c, i in cat.items()]}
    gt.createIndex()
    e = COCOeval_faster(gt, gt.loadRes(dets), "bbox", print_function=lambda *a, **k: None)
    e.evaluate()
    e.accumulate()
    e.summarize()
    return float(e.stats[1])


def floor_boxes(db: Path, job_id: int) -> tuple[float, float]:
    con = sqlite3.connect(db)
    t = time.perf_counter()
    by_site: dict[str, list[tuple[Any, ...]]] = {}
    rows = []
    for sid, width, height, _, truth, change, site in con.execute(_FLOOR_SQL, (job_id,)):
        r = (sid, width, height, json.loads(truth), json.loads(change)["boundingBoxes"])
        rows.append(r)
        by_site.setdefault(site, []).append(r)
    overall = _coco(rows)
    for members in by_site.values():
        _coco(members)
    dt = time.perf_counter() - t
    con.close()
    return dt, overall


def floor_labels(db: Path, job_id: int) -> tuple[float, float]:
    from sklearn.metrics import accuracy_score, classification_report, confusion_matrix

    con = sqlite3.connect(db)
    t = time.perf_counter()
    truth, pred, site = [], [], []
    for _, _, _, label, _, change, s in con.execute(_FLOOR_SQL, (job_id,)):
        truth.append(label)
        pred.append(json.loads(change)["label"])
        site.append(s)

    def measure(tr: Any, pr: Any) -> float:
        confusion_matrix(tr, pr, labels=CLASSES)
        classification_report(tr, pr, labels=CLASSES, output_dict=True, zero_division=0)
        return float(accuracy_score(tr, pr))

    overall = measure(truth, pred)
    sites = np.asarray(site)
    tr, pr = np.asarray(truth), np.asarray(pred)
    for s in SITES:
        m = sites == s
        measure(tr[m], pr[m])
    dt = time.perf_counter() - t
    con.close()
    return dt, overall


def bench(name: str, project: Path, job_id: int, floor: Any, repeats: int, target: float) -> None:
    db = project / ".labelblocks" / "project.db"
    ours, floors = [], []
    doc: dict[str, Any] = {}
    expected = 0.0
    for _ in range(repeats):
        dt, doc = cli_evaluate(project, job_id)
        ours.append(dt)
        dt, expected = floor(db, job_id)
        floors.append(dt)
    item = doc["modelValidationMetrics"][0]
    worst = doc["groups"][0]["values"][0]
    ratio = statistics.median(ours) / statistics.median(floors)
    print(f"{name}: {doc['samples']:,} samples; evaluate {statistics.median(ours):.2f} s (runs "
          f"{', '.join(f'{x:.2f}' for x in ours)}), floor {statistics.median(floors):.2f} s (runs "
          f"{', '.join(f'{x:.2f}' for x in floors)}); ratio {ratio:.2f}x (target <= {target}x) "
          f"{'OK' if ratio <= target else 'MISSED'}")
    print(f"  accuracy figure {item['accuracy']:.4f} (floor's {expected:.4f}); worst site {worst['value']}")
    if abs(item["accuracy"] - expected) > 1e-9:
        raise SystemExit(f"{name}: the evaluation's figure differs from the floor's: {item['accuracy']} != {expected}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=100_000)
    ap.add_argument("--labels", type=int, default=1_000_000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--work", type=Path, default=None)
    args = ap.parse_args()
    print(f"CPU: {cpu_flags()}; {os.cpu_count()} cores")
    work = Path(tempfile.mkdtemp(dir=args.work))
    try:
        if args.images:
            project = work / "boxes"
            init_project(project)
            t = time.perf_counter()
            job_id = seed_boxes(project, args.images)
            print(f"seeded {args.images:,} images x 10 boxes in {time.perf_counter() - t:.0f} s")
            bench("boxes", project, job_id, floor_boxes, args.repeats, 1.5)
        if args.labels:
            project = work / "labels"
            init_project(project)
            t = time.perf_counter()
            job_id = seed_labels(project, args.labels)
            print(f"seeded {args.labels:,} labeled samples in {time.perf_counter() - t:.0f} s")
            bench("single labels", project, job_id, floor_labels, args.repeats, 2.0)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
