"""Splits: leakage, stratification against scikit-learn, determinism, stability, bad input;
metadata statistics."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.model_selection import StratifiedGroupKFold

from labelblocks.model import CATEGORIES
from labelblocks.project import open_store
from labelblocks.split import SplitData, SplitOptions, assign
from labelblocks.store import NewSample

from .conftest import Cli, project_sql


def seed_samples(project: Path, rows: list[dict[str, Any]]) -> None:
    """Samples straight into the store (the split reads labels and metadata only)."""
    with open_store(project) as store:
        store.add_samples([NewSample(filename=f"f{i}.png", category=r.get("category", "training"),
                                     content_hash=f"{i:064x}", media_type="image/png", ext=".png", width=8, height=8,
                                     label=r.get("label"), metadata=r.get("metadata", {}))
                           for i, r in enumerate(rows)])


def videos(n_videos: int, seed: int = 0, start: int = 0, n_labels: int = 5) -> list[dict[str, Any]]:
    """Frames of videos: 1-30 frames each, mostly one label per video, a site per video."""
    rng = np.random.default_rng(seed)
    rows = []
    for v in range(start, start + n_videos):
        dominant = int(rng.integers(0, n_labels))
        site = f"site{v % 3}"
        for _ in range(int(rng.integers(1, 31))):
            lab = dominant if rng.random() < 0.7 else int(rng.integers(0, n_labels))
            rows.append({"label": f"label{lab}", "metadata": {"video_file": f"video{v:04d}.mp4", "site": site}})
    return rows


def categories(project: Path) -> dict[int, str]:
    con = project_sql(project)
    return dict(con.execute("SELECT id, category FROM samples"))


def tv_deviation(split: np.ndarray, labels: np.ndarray) -> float:
    """Mean over the splits of the total variation distance between the split's label
    distribution and the whole's."""
    overall = np.bincount(labels) / len(labels)
    devs = []
    for s in range(3):
        m = split == s
        devs.append(0.5 * np.abs(np.bincount(labels[m], minlength=len(overall)) / max(m.sum(), 1) - overall).sum())
    return float(np.mean(devs))


# --- the whole story through the CLI -----------------------------------------------------------


def test_video_frames_split_check_and_add_more(cli: Cli, project: Path) -> None:
    seed_samples(project, videos(200))
    out = cli.json("split", "--keep-together", "video_file")
    assert out["leaks"] == [] and out["groups"] == 200 and out["placed"] == out["samples"]
    n = out["samples"]
    sizes = {c: s["samples"] for c, s in out["splits"].items()}
    for c, r in zip(CATEGORIES, (0.8, 0.1, 0.1), strict=True):
        assert abs(sizes[c] - r * n) <= 30  # within one group (a video has at most 30 frames)
    # labels balanced: every split's label shares within a few points of the whole
    whole: dict[str, int] = {}
    for s in out["splits"].values():
        for lab, c in s["labels"].items():
            whole[lab] = whole.get(lab, 0) + c
    for s in out["splits"].values():
        for lab, c in whole.items():
            assert abs(s["labels"].get(lab, 0) / s["samples"] - c / n) < 0.05
    assert cli("split", "check", "--keep-together", "video_file").exit_code == 0
    before = categories(project)
    # 20 more videos later: only they are placed, nothing placed before moves
    seed_samples(project, videos(20, seed=1, start=200))
    out2 = cli.json("split", "--keep-together", "video_file")
    assert out2["kept"] == n and out2["placed"] == out2["samples"] - n and out2["leaks"] == []
    after = categories(project)
    assert all(after[i] == c for i, c in before.items())
    assert len({after[i] for i in after if i not in before}) > 1  # the new videos went to several splits
    # the same command again changes nothing
    out3 = cli.json("split", "--keep-together", "video_file")
    assert out3["placed"] == 0 and out3["changed"] == 0 and categories(project) == after


def test_new_frames_of_a_placed_video_join_it(cli: Cli, project: Path) -> None:
    seed_samples(project, videos(30))
    cli.json("split", "--keep-together", "video_file")
    cats = categories(project)
    first_val = next(i for i, c in sorted(cats.items()) if c == "validation")
    with open_store(project) as store:
        video = store.get_sample(first_val).metadata["video_file"]
    seed_samples(project, [{"label": "label0", "metadata": {"video_file": video}}] * 3)
    out = cli.json("split", "--keep-together", "video_file")
    assert out["leaks"] == []
    new = [c for i, c in categories(project).items() if i not in cats]
    assert new == ["validation"] * 3


def test_a_filtered_split_reads_what_a_row_by_row_reader_reads(project: Path) -> None:
    """The loader reads columns in aggregates; it must agree with reading sample by sample,
    also for a selection (values only other samples have are not groups), separators inside
    labels and values, and samples labelled only by their boxes."""
    from labelblocks.filters import MetadataCondition, SampleFilter
    from labelblocks.model import BoundingBox, SampleChange
    from labelblocks.split import load, sample_label

    rows = videos(30, seed=3)
    for r in rows[:3]:
        r["metadata"] = {**r["metadata"], "site": "site1"}
    rows[0]["label"] = "odd\x1flabel"
    rows[1]["metadata"]["video_file"] = "odd\x1fvalue"
    rows[2]["label"] = None
    seed_samples(project, rows)
    with open_store(project) as store:
        with store.transaction() as conn:  # sample 3 is labelled by its boxes only
            store.apply_changes(conn, [(3, SampleChange(bounding_boxes=[
                BoundingBox(label=lab, x=0, y=0, width=2, height=2) for lab in ("dog", "cat", "dog")]))])
        f = SampleFilter(metadata=[MetadataCondition(key="site", values=["site1"])])
        data = load(store, f, SplitOptions(keep_together=["video_file"], stratify_keys=["site"]))
    con = project_sql(project)
    want = con.execute("SELECT s.id, s.label, s.bounding_boxes, m.value FROM samples s JOIN sample_metadata m "
                       "ON m.sample_id = s.id AND m.key = 'video_file' JOIN sample_metadata t ON t.sample_id = s.id "
                       "AND t.key = 'site' AND t.value = 'site1' ORDER BY s.id").fetchall()
    assert len(want) < len(rows) and want[0][0] == 1
    assert data.ids.tolist() == [r[0] for r in want]
    assert data.label == [sample_label(r[1], r[2]) for r in want]
    assert data.label[:3] == ["odd\x1flabel", rows[1]["label"], "dog"]
    assert sorted(data.group_names) == sorted({r[3] for r in want})  # only the selection's videos
    assert [data.group_names[g] for g in data.group.tolist()] == [r[3] for r in want]


def test_dry_run_writes_nothing_and_prints_the_table(cli: Cli, project: Path) -> None:
    seed_samples(project, videos(40))
    r = cli("split", "--keep-together", "video_file", "--stratify-key", "site", "--dry-run")
    assert "dry run: nothing written" in r.stdout
    for word in ("train", "validation", "test", "label0", "site", "site1", "Would place"):
        assert word in r.stdout
    assert set(categories(project).values()) == {"training"}
    with project_sql(project) as con:
        assert con.execute("SELECT count(*) FROM split_runs").fetchone()[0] == 0
    # the real run prints the same table
    real = cli("split", "--keep-together", "video_file", "--stratify-key", "site")
    table = [line for line in r.stdout.splitlines() if line.startswith("  ")]
    assert table == [line for line in real.stdout.splitlines() if line.startswith("  ")]


def test_missing_key_samples_are_their_own_groups(cli: Cli, project: Path) -> None:
    rows = videos(20) + [{"label": "label1"}] * 7
    seed_samples(project, rows)
    r = cli("split", "--keep-together", "video_file")
    assert "7 samples lack video_file: each is its own group." in r.stdout


def test_split_check_finds_a_leak(cli: Cli, project: Path) -> None:
    seed_samples(project, videos(30))
    cli.json("split", "--keep-together", "video_file")
    cats = categories(project)
    moved = next(i for i, c in sorted(cats.items()) if c == "training")
    with open_store(project) as store:
        video = store.get_sample(moved).metadata["video_file"]
        store.set_categories({moved: "testing"})
    r = cli("split", "check", "--keep-together", "video_file", expect=1)
    assert f"video_file={video}: " in r.stdout and "test 1" in r.stdout
    assert cli.json("split", "check", "--keep-together", "video_file", expect=1)["leaks"][0]["counts"]["testing"] == 1
    assert cli("samples", "list", "--category", "validation").exit_code == 0


@pytest.mark.parametrize(("args", "message"), [
    (["--train", "0.7"], "the ratios add up to 0.9, not 1"),
    (["--train", "1.1", "--validation", "-0.1", "--test", "0"], "--train 1.1: a ratio is between 0 and 1"),
    (["--keep-together", "nosuchkey"], "no sample has metadata key 'nosuchkey'"),
    (["--stratify-key", "nosuchkey"], "no sample has metadata key 'nosuchkey'"),
    (["--where", "site=nowhere"], "the selection has no samples: nothing to split"),
])
def test_bad_input_writes_nothing(cli: Cli, project: Path, args: list[str], message: str) -> None:
    seed_samples(project, videos(10))
    r = cli("split", *args, expect=1)
    assert message in r.stderr
    assert set(categories(project).values()) == {"training"}


# --- against scikit-learn ----------------------------------------------------------------------


def _data(groups: np.ndarray, labels: np.ndarray) -> SplitData:
    n = len(groups)
    return SplitData(np.arange(1, n + 1), np.zeros(n, dtype=np.int8), [f"l{x}" for x in labels], groups,
                     [f"g{g}" for g in range(int(groups.max()) + 1)], 0)


def _generated(seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    n_groups, n_labels = 150 + 20 * seed, 4 + seed
    p = rng.dirichlet(np.ones(n_labels))
    groups, labels = [], []
    for g in range(n_groups):
        dominant = rng.choice(n_labels, p=p)
        for _ in range(int(rng.geometric(0.08))):
            groups.append(g)
            labels.append(dominant if rng.random() < 0.7 else rng.choice(n_labels, p=p))
    return np.array(groups), np.unique(np.array(labels), return_inverse=True)[1]


@pytest.mark.parametrize("seed", range(6))
def test_no_leakage_and_label_balance_at_least_as_good_as_stratified_group_kfold(seed: int) -> None:
    groups, labels = _generated(seed)
    ours = assign(_data(groups, labels), SplitOptions(), np.zeros(len(groups), dtype=bool))
    folds = np.empty(len(groups), dtype=np.int64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "least populated class has only N members"
        sgkf = StratifiedGroupKFold(n_splits=10, shuffle=True, random_state=seed)
        for f, (_, test) in enumerate(sgkf.split(np.zeros(len(groups)), labels, groups)):
            folds[test] = f
    ref = np.where(folds == 0, 2, np.where(folds == 1, 1, 0))  # 8 folds train, 1 validation, 1 test: 80/10/10
    for split in (ours, ref):
        per_group = {}
        for g, s in zip(groups.tolist(), split.tolist(), strict=True):
            assert per_group.setdefault(g, s) == s  # zero leakage, like theirs
    assert tv_deviation(ours, labels) <= tv_deviation(ref, labels)


# --- properties --------------------------------------------------------------------------------

group_sizes = st.lists(st.integers(1, 12), min_size=1, max_size=60)
ratio_sets = st.sampled_from([(0.8, 0.1, 0.1), (0.7, 0.15, 0.15), (0.5, 0.5, 0.0), (1.0, 0.0, 0.0), (0.6, 0.2, 0.2)])


def _from_sizes(sizes: list[int], labels_seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(labels_seed)
    groups = np.repeat(np.arange(len(sizes)), sizes)
    return groups, rng.integers(0, 4, len(groups))


@settings(max_examples=150, deadline=None)
@given(group_sizes, st.integers(0, 1000), ratio_sets)
def test_property_no_leak_ratios_within_one_group_deterministic(sizes: list[int], lseed: int,
                                                                ratios: tuple[float, float, float]) -> None:
    groups, labels = _from_sizes(sizes, lseed)
    data = _data(groups, labels)
    opts = SplitOptions(ratios=ratios)
    out = assign(data, opts, np.zeros(len(groups), dtype=bool))
    for g in range(len(sizes)):
        assert len(set(out[groups == g].tolist())) == 1
    n = len(groups)
    for s, r in enumerate(ratios):
        assert abs(int((out == s).sum()) - r * n) <= max(sizes) + 1e-9
        if r == 0:
            assert not (out == s).any()
    assert np.array_equal(out, assign(_data(groups, labels), opts, np.zeros(len(groups), dtype=bool)))


@settings(max_examples=100, deadline=None)
@given(group_sizes, group_sizes, st.integers(0, 1000))
def test_property_stable_under_additions(first: list[int], more: list[int], lseed: int) -> None:
    groups, labels = _from_sizes(first, lseed)
    out = assign(_data(groups, labels), SplitOptions(), np.zeros(len(groups), dtype=bool))
    # later: new groups, and new members of some old groups
    rng = np.random.default_rng(lseed)
    extra_old = rng.integers(0, len(first), 5)
    new_groups = np.concatenate([groups, extra_old, np.repeat(np.arange(len(more)) + len(first), more)])
    new_labels = np.concatenate([labels, rng.integers(0, 4, len(new_groups) - len(groups))])
    data = _data(new_groups, new_labels)
    data.category = np.concatenate([out, np.zeros(len(new_groups) - len(groups), dtype=np.int64)]).astype(np.int8)
    assigned = np.zeros(len(new_groups), dtype=bool)
    assigned[: len(groups)] = True
    out2 = assign(data, SplitOptions(), assigned)
    assert np.array_equal(out2[: len(groups)], out)  # nothing placed before moves
    for g in range(int(new_groups.max()) + 1):
        assert len(set(out2[new_groups == g].tolist())) == 1  # new members joined their group


# --- metadata statistics ---------------------------------------------------------------------------


def test_metadata_stats_and_cooccurrence(cli: Cli, project: Path) -> None:
    rows = [{"label": "cat" if i % 3 else "dog", "metadata": {"site": "A" if i < 6 else "B", "device": f"d{i % 2}",
                                                              "temperature": f"{10 + i * 0.5}"}}
            for i in range(40)] + [{"label": "cat"}]
    seed_samples(project, rows)
    r = cli.json("metadata", "stats", "site", "--by-label", "--by-split")
    assert r["samples"] == 41 and r["missing"] == 1 and not r["binned"]
    values = {v["value"]: v for v in r["values"]}
    assert values["A"]["count"] == 6 and values["B"]["count"] == 34 and values["(missing)"]["count"] == 1
    assert values["A"]["labels"] == {"cat": 4, "dog": 2} and values["A"]["splits"] == {"training": 6}
    t = cli.json("metadata", "stats", "temperature")
    assert t["binned"] and len(t["values"]) == 11  # 10 bins and the sample without it
    assert sum(v["count"] for v in t["values"]) == 41 and t["values"][0]["value"].startswith("[10, ")
    co = cli.json("metadata", "cooccurrence", "site", "device")
    assert co["counts"]["A"] == {"d0": 3, "d1": 3} and co["counts"]["(missing)"] == {"(missing)": 1}
    text = cli("metadata", "stats", "site", "--by-label").stdout
    assert "A" in text and "cat 4, dog 2" in text
    assert "rows: site, columns: device" in cli("metadata", "cooccurrence", "site", "device").stdout
    assert "no sample has metadata key 'nope'" in cli("metadata", "stats", "nope", expect=1).stderr


def test_near_duplicate_groups_as_keep_together_key(cli: Cli, tmp_path: Path) -> None:
    """The README's recipe for data without useful metadata: near-duplicates, then split."""
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[1]
    subprocess.run([sys.executable, str(repo / "examples" / "make_dataset.py"), str(tmp_path / "ex")], check=True,
                   capture_output=True)
    cli("upload", "--info-file", str(tmp_path / "ex" / "images" / "info.labels"))
    cli("actions", "create", "dedup", "--step", "near-duplicates")
    cli("actions", "run", "dedup")
    out = cli.json("split", "--keep-together", "duplicate_group", "--train", "0.5", "--validation", "0.25",
                   "--test", "0.25")
    assert out["leaks"] == [] and out["groups"] == 12 and out["missingKey"] == 0
    by_group: dict[str, set[str]] = {}
    for s in cli.json("samples", "list"):
        by_group.setdefault(s["metadata"]["duplicate_group"], set()).add(s["category"])
    assert all(len(c) == 1 for c in by_group.values())
    assert {c for cs in by_group.values() for c in cs} == set(CATEGORIES)
