from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from click.testing import CliRunner

from labelblocks.cli import main
from labelblocks.project import DATA_DIR
from labelblocks.store import Store
from labelblocks.store.schema import latest_version


def test_init_creates_wal_database_and_blob_folder(tmp_path: Path) -> None:
    r = CliRunner().invoke(main, ["init", str(tmp_path / "p")])
    assert r.exit_code == 0, r.output
    data = tmp_path / "p" / DATA_DIR
    assert (data / "blobs").is_dir()
    con = sqlite3.connect(data / "project.db")
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    versions = [v for (v,) in con.execute("SELECT version FROM schema_migrations ORDER BY version")]
    assert versions == list(range(1, latest_version() + 1))


def test_init_twice_refuses_and_keeps_data(tmp_path: Path) -> None:
    runner = CliRunner()
    assert runner.invoke(main, ["init", str(tmp_path)]).exit_code == 0
    db = tmp_path / DATA_DIR / "project.db"
    before = db.stat().st_size
    r = runner.invoke(main, ["init", str(tmp_path)])
    assert r.exit_code == 1
    assert "already a labelblocks project" in r.output
    assert db.stat().st_size == before


def test_commands_find_project_upward_from_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    runner = CliRunner()
    runner.invoke(main, ["init", str(tmp_path)])
    sub = tmp_path / "a" / "b"
    sub.mkdir(parents=True)
    monkeypatch.chdir(sub)
    r = runner.invoke(main, ["samples", "list"])
    assert r.exit_code == 0, r.output
    assert "No samples match" in r.output


def test_project_from_env_var(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    runner = CliRunner()
    runner.invoke(main, ["init", str(tmp_path / "p")])
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LABELBLOCKS_PROJECT", str(tmp_path / "p"))
    assert runner.invoke(main, ["metadata", "keys"]).exit_code == 0


def test_no_project_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    r = CliRunner().invoke(main, ["samples", "list"])
    assert r.exit_code == 1
    assert "no labelblocks project" in r.output and "labelblocks init" in r.output
    r = CliRunner().invoke(main, ["--project", str(tmp_path / "nope"), "samples", "list"])
    assert r.exit_code == 1
    assert "is not a labelblocks project" in r.output
    assert "Traceback" not in r.output


def test_migrations_apply_on_open_and_are_idempotent(tmp_path: Path) -> None:
    with Store.open(tmp_path / "d", create=True) as s:
        assert s.migrate() == latest_version()
    # reopening applies nothing new and keeps the recorded versions
    with Store.open(tmp_path / "d") as s:
        assert s.migrate() == latest_version()
    con = sqlite3.connect(tmp_path / "d" / "project.db")
    assert con.execute("SELECT count(*) FROM schema_migrations").fetchone()[0] == latest_version()


def test_help_has_examples() -> None:
    runner = CliRunner()
    for cmd in (["upload"], ["samples", "list"], ["metadata", "set"], ["export"], ["init"]):
        r = runner.invoke(main, [*cmd, "--help"])
        assert r.exit_code == 0
        assert "Example" in r.output, cmd


def test_v6_moves_cache_keys_to_job_steps_and_keeps_every_proposal(tmp_path: Path) -> None:
    with Store.open(tmp_path / "d", create=True):
        pass
    # put the database back to version 5: proposals as that version created them, with its keys
    con = sqlite3.connect(tmp_path / "d" / "project.db")
    rev = 1763830000.1234567
    with con:
        con.execute("DROP TABLE proposals")
        con.execute("DROP TABLE job_steps")
        con.execute("CREATE TABLE proposals (job_id INTEGER NOT NULL, sample_id INTEGER NOT NULL, step INTEGER NOT NULL, "
                    "change TEXT NOT NULL, record TEXT, cache_key VARCHAR(64), PRIMARY KEY (job_id, sample_id, step), "
                    "FOREIGN KEY(job_id) REFERENCES jobs (id) ON DELETE CASCADE)")
        con.execute("CREATE INDEX ix_proposals_cache_key ON proposals (cache_key)")
        con.execute("INSERT INTO jobs (id, action, kind, status, definition, definition_hash, usage, created_at, "
                    "updated_at) VALUES (1, 'a', 'preview', 'completed', '{}', 'h', '{}', 0, 0)")
        con.executemany("INSERT INTO proposals VALUES (?, ?, ?, ?, ?, ?)", [
            (1, 7, 1, '{"label":"cat"}', None, f"{'a' * 32}:7:{rev!r}"),
            (1, 12345, 1, '{"label":"dog"}', '{"s": 1}', f"{'a' * 32}:12345:{rev + 1!r}"),
            (1, 7, 2, '{}', None, f"{'b' * 32}:7:{rev!r}"),
            (1, 8, 2, '{}', None, None),
        ])
        con.execute("DELETE FROM schema_migrations WHERE version >= 6")
    con.close()
    with Store.open(tmp_path / "d") as s:
        assert s.migrate() == latest_version()
    con = sqlite3.connect(tmp_path / "d" / "project.db")
    assert con.execute("PRAGMA foreign_key_list(proposals)").fetchall() == []
    assert con.execute("SELECT * FROM proposals ORDER BY step, sample_id").fetchall() == [
        (1, 7, 1, '{"label":"cat"}', None, rev),  # the revision comes back exactly
        (1, 12345, 1, '{"label":"dog"}', '{"s": 1}', rev + 1),
        (1, 7, 2, "{}", None, rev),
        (1, 8, 2, "{}", None, None),
    ]
    assert con.execute("SELECT * FROM job_steps ORDER BY step").fetchall() == [(1, 1, "a" * 32), (1, 2, "b" * 32)]
    names = {r[0] for r in con.execute("SELECT name FROM sqlite_master")}
    assert "proposals_v5" not in names and "ix_proposals_cache_key" not in names


def test_store_applies_many_changes_in_few_statements_and_rolls_back_on_a_missing_sample(tmp_path: Path) -> None:
    from labelblocks.errors import NotFound
    from labelblocks.model import BoundingBox, SampleChange, StructuredLabel
    from labelblocks.store import NewSample

    with Store.open(tmp_path / DATA_DIR, create=True) as store:
        img = {"category": "training", "content_hash": "0" * 64, "media_type": "image/png", "ext": ".png",
               "width": 8, "height": 6}
        ids = store.add_samples([NewSample(filename=f"s{i}.png", **img, metadata={"site": "A"}) for i in range(3)]
                                + [NewSample(filename="a.wav", category="training", content_hash="1" * 64,
                                             media_type="audio/wav", ext=".wav", frequency=100.0, values_count=10,
                                             chart_type="chart")])
        changes = [
            (ids[0], SampleChange(label="cat", is_disabled=True)),
            (ids[1], SampleChange(bounding_boxes=[BoundingBox(label="dog", x=1, y=1, width=4, height=3)],
                                  metadata={"site": "B", "new": "yes"})),
            (ids[2], SampleChange(metadata={})),
            (ids[3], SampleChange(structured_labels=[StructuredLabel(start_index=0, end_index=9, label="hum")])),
        ]
        with store.transaction() as conn:
            store.apply_changes(conn, changes)
        s = {x.id: x for x in store.get_samples(ids)}
        assert (s[ids[0]].label, s[ids[0]].is_disabled, s[ids[0]].metadata) == ("cat", True, {"site": "A"})
        assert [(b.label, b.x, b.width) for b in s[ids[1]].bounding_boxes] == [("dog", 1, 4)]
        assert s[ids[1]].metadata == {"site": "B", "new": "yes"} and s[ids[1]].label is None
        assert s[ids[2]].metadata == {}
        assert [(x.start_index, x.end_index, x.label) for x in s[ids[3]].structured_labels] == [(0, 9, "hum")]
        # a NUL character survives (SQLite's ->> would cut the text there, so such rows go one by one)
        with store.transaction() as conn:
            store.apply_changes(conn, [(ids[2], SampleChange(label="a\x00b", metadata={"k\x00": "v\x00w"})),
                                       (ids[1], SampleChange(label="plain"))])
        s = {x.id: x for x in store.get_samples(ids)}
        assert (s[ids[2]].label, s[ids[2]].metadata, s[ids[1]].label) == ("a\x00b", {"k\x00": "v\x00w"}, "plain")
        before = store.revisions(ids)
        assert store.revisions([ids[0], 99, 1000]) == {ids[0]: before[ids[0]]}  # a sparse list: looked up by id
        with pytest.raises(NotFound, match="no sample with id 99"), store.transaction() as conn:
            store.apply_changes(conn, [(ids[0], SampleChange(label="wolf")), (99, SampleChange(label="x"))])
        assert store.get_samples([ids[0]])[0].label == "cat" and store.revisions(ids) == before
        with pytest.raises(NotFound, match="no sample with id 98"):
            store.prepare_changes([(98, SampleChange(bounding_boxes=[BoundingBox(label="a", x=0, y=0, width=1, height=1)]))])
        assert store.prepare_changes([(98, SampleChange(structured_labels=[])), (ids[0], SampleChange(label="a"))],
                                     missing_ok=True).count == 1
