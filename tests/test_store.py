"""The store's contract below the CLI: jobs, their proposals, reuse of results by revision,
apply (with samples deleted or changed since), discarding; keys, actions and external
blocks. Everything through the store's public functions on a real SQLite file."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import text as sa_text

from labelblocks.errors import InvalidInput
from labelblocks.model import BoundingBox, SampleChange, compose
from labelblocks.project import DATA_DIR
from labelblocks.store import NewSample, Store
from labelblocks.store import actions as action_store
from labelblocks.store import jobs as job_store
from labelblocks.store import keys as key_store
from labelblocks.store import proposals as proposal_store
from labelblocks.store.external_blocks import (
    ExternalBlockRow,
    delete_external_block,
    list_external_blocks,
    save_external_block,
)
from labelblocks.store.jobs import ANY_REVISION, ROWS


@pytest.fixture(params=["sqlite", "postgresql"])
def store(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Store]:
    """Five samples in a new store, on each dialect."""
    url = request.getfixturevalue("postgres_database") if request.param == "postgresql" else None
    with Store.open(tmp_path / DATA_DIR, create=True, url=url) as s:
        s.add_samples([NewSample(filename=f"s{i}.png", category="training", content_hash=f"{i:064d}",
                                 media_type="image/png", ext=".png", width=8, height=6, metadata={"site": "A"})
                       for i in range(5)])
        yield s


def _job(store: Store, ids: list[int], steps: int = 2, kind: str = "preview") -> int:
    definition = {"name": "a", "steps": [{"step": i + 1} for i in range(steps)]}
    return job_store.create_job(store, "a", kind, definition, "hash-" + kind, ids)


def _computed(rows: list[tuple[int, SampleChange, str | None, float | None]]) -> list[str]:
    return [ROWS.dump_json(rows, by_alias=True, exclude_none=True).decode()[1:-1]]


def test_a_new_job_is_running_over_its_samples_and_records_status_and_usage(store: Store) -> None:
    job = _job(store, [3, 1, 2])
    rec = job_store.get_job(store, job)
    assert rec is not None and (rec.action, rec.kind, rec.status, rec.step_count) == ("a", "preview", "running", 2)
    assert job_store.job_sample_ids(store, job) == [1, 2, 3]
    assert job_store.job_state(store, job).pending() == [1, 2, 3]
    job_store.add_job_usage(store, job, {"requests": 2})
    job_store.add_job_usage(store, job, {"requests": 3, "tokens": 7})
    job_store.add_job_usage(store, job, {})
    assert job_store.job_usage(store, job) == {"requests": 5, "tokens": 7}
    job_store.set_job_status(store, job, "failed", "boom")
    rec = job_store.get_job(store, job)
    assert rec is not None and (rec.status, rec.error) == ("failed", "boom")
    assert job_store.get_job(store, 99) is None
    assert [j.id for j in job_store.list_jobs(store)] == [job]


def test_unfinished_run_finds_the_newest_run_of_the_same_definition(store: Store) -> None:
    first = _job(store, [1], kind="run")
    second = _job(store, [1], kind="run")
    _job(store, [1], kind="preview")
    found = job_store.unfinished_run(store, "a", "hash-run")
    assert found is not None and found.id == second
    job_store.set_job_status(store, second, "completed")
    found = job_store.unfinished_run(store, "a", "hash-run")
    assert found is not None and found.id == first
    job_store.set_job_status(store, first, "completed")
    assert job_store.unfinished_run(store, "a", "hash-run") is None
    assert job_store.unfinished_run(store, "other", "hash-run") is None


def test_step_results_are_written_read_in_step_order_and_overlaid(store: Store) -> None:
    job = _job(store, [1, 2, 3])
    box = BoundingBox(label="cat", x=0, y=0, width=2, height=2)
    job_store.write_step_results(store, job, 1, _computed([(1, SampleChange(label="a"), None, 5.0),
                                                           (2, SampleChange(bounding_boxes=[box]), '{"s": 1}', None)]),
                                 [], [(3, "refused")])
    job_store.write_step_results(store, job, 2, [], [(1, '{"isDisabled":true}', None, 6.0)], [])
    props = proposal_store.read_proposals(store, job)
    assert props == {1: [SampleChange(label="a"), SampleChange(is_disabled=True)], 2: [SampleChange(bounding_boxes=[box])]}
    assert proposal_store.read_proposals(store, job, [1], max_step=1) == {1: [SampleChange(label="a")]}
    assert job_store.proposed_ids(store, job, 1) == {1, 2} and job_store.proposed_ids(store, job, 2) == {1}
    assert job_store.job_errors(store, job) == {3: (1, "refused")}
    assert job_store.job_state(store, job).counts() == {"pending": 2, "failed": 1}
    listed = proposal_store.job_proposals(store, job)
    assert [(p["sampleId"], p["step"]) for p in listed] == [(1, 1), (1, 2), (2, 1)]
    assert listed[2]["record"] == {"s": 1} and "record" not in proposal_store.job_proposals(store, job, records=False)[2]
    stored = store.get_samples([1, 2])
    seen = proposal_store.overlay(store, job, stored, max_step=1)
    assert (seen[0].label, seen[0].is_disabled, [b.label for b in seen[1].bounding_boxes]) == ("a", False, ["cat"])
    assert proposal_store.overlay(store, job, stored)[0].is_disabled is True
    assert proposal_store.overlay(store, job, stored, max_step=0) == stored


def test_staging_replaces_or_merges_a_proposal(store: Store) -> None:
    job = _job(store, [1])
    job_store.stage_proposal(store, job, 1, 1, SampleChange(label="a", metadata={"k": "v"}))
    job_store.stage_proposal(store, job, 1, 1, SampleChange(is_disabled=True), merge=True)
    assert proposal_store.read_proposals(store, job)[1] == [SampleChange(label="a", metadata={"k": "v"}, is_disabled=True)]
    job_store.stage_proposal(store, job, 1, 1, SampleChange(label="b"))
    assert proposal_store.read_proposals(store, job)[1] == [SampleChange(label="b")]


@pytest.mark.parametrize(("stored_revision", "asked_revision", "reused"), [
    ("current", "current", True),  # same state of the sample
    ("current", "other", False),  # the sample changed since
    (ANY_REVISION, "other", True),  # the block never looked at the sample
    (None, "current", False),  # no revision: never reused (a project key's proposal)
])
def test_results_are_reused_by_cache_key_and_revision(store: Store, stored_revision: object, asked_revision: str,
                                                      reused: bool) -> None:
    current = store.revisions([1])[1]
    rev = current if stored_revision == "current" else stored_revision
    job = _job(store, [1])
    job_store.record_step(store, job, 1, "key-1")
    job_store.write_step_results(store, job, 1, [], [(1, '{"label":"x"}', '{"r": 1}', rev)], [])  # type: ignore[list-item]
    ask = {1: current if asked_revision == "current" else current + 1}
    hits = job_store.cached_results(store, "key-1", ask)
    assert hits == ({1: ('{"label":"x"}', '{"r": 1}')} if reused else {})
    assert job_store.cached_results(store, "key-2", ask) == {}
    assert job_store.cached_results(store, "key-1", {}) == {}


def test_apply_chunk_applies_and_leaves_out_samples_deleted_or_changed_since(store: Store) -> None:
    revs = store.revisions([1, 2, 3, 4])
    job = _job(store, [1, 2, 3, 4], steps=1)
    rows = [(sid, SampleChange(label=f"L{sid}"), None, revs[sid]) for sid in (1, 2, 3, 4)]
    job_store.write_step_results(store, job, 1, _computed(rows), [], [])
    store.update_metadata([2], {"site": "B"})  # changed since the job proposed
    store.delete_samples([3])
    assert proposal_store.stale_samples(store, job, [1, 2, 3, 4]) == {2}
    writes = [(sid, compose([SampleChange(label=f"L{sid}")])) for sid in (1, 2, 3, 4)]
    prepared = store.prepare_changes(writes, missing_ok=True)
    assert job_store.apply_chunk(store, job, [1, 2, 3, 4], writes, prepared) == 2
    labels = {s.id: s.label for s in store.get_samples([1, 2, 4])}
    assert labels == {1: "L1", 2: None, 4: "L4"}
    state = job_store.job_state(store, job)
    assert (state.applied, state.discarded, state.pending()) == ({1, 4}, {2, 3}, [])
    assert job_store.discarded_count(store, job) == 2


def test_discarding_drops_proposals_and_pending_samples(store: Store) -> None:
    job = _job(store, [1, 2, 3])
    job_store.write_step_results(store, job, 1, _computed([(1, SampleChange(label="a"), None, None),
                                                           (2, SampleChange(label="b"), None, None)]), [], [(3, "x")])
    assert job_store.discard_job(store, job) == 2
    rec = job_store.get_job(store, job)
    assert rec is not None and rec.status == "discarded"
    assert proposal_store.read_proposals(store, job) == {}
    assert job_store.job_state(store, job).counts() == {"failed": 1, "discarded": 2}


def test_keys_are_stored_hashed_verified_and_revoked(store: Store) -> None:
    rec, key = key_store.create_key(store, "laptop")
    assert key.startswith("ei_") and rec.prefix == key[:10]
    with store.engine.connect() as conn:
        stored = " ".join(str(v) for row in conn.execute(sa_text("SELECT * FROM api_keys")) for v in row)
    assert key not in stored and key_store.hash_key(key) in stored
    found = key_store.verify_key(store, key)
    assert found is not None and found.id == rec.id
    for bad in (None, "", "nope", key + "x", "ei_" + "0" * 64):
        assert key_store.verify_key(store, bad) is None
    key_store.revoke_key(store, "laptop")
    assert key_store.verify_key(store, key) is None


def test_action_definitions_are_saved_listed_and_deleted(store: Store) -> None:
    action_store.save_definition(store, "b", json.dumps({"name": "b"}))
    action_store.save_definition(store, "a", json.dumps({"name": "a"}))
    with pytest.raises(InvalidInput, match="an action named 'a' exists"):
        action_store.save_definition(store, "a", "{}")
    action_store.save_definition(store, "a", json.dumps({"name": "a", "v": 2}), replace=True)
    assert [json.loads(t) for t in action_store.list_definitions(store)] == [{"name": "a", "v": 2}, {"name": "b"}]
    assert action_store.get_definition(store, "zz") is None
    assert action_store.delete_definition(store, "a") and not action_store.delete_definition(store, "a")


def test_external_blocks_are_registered_replaced_and_removed(store: Store) -> None:
    row = ExternalBlockRow("ext", "command", "/blocks/ext", ["python", "main.py"], None,
                           {"version": 1, "info": {"name": "Ext"}}, 30.0)
    save_external_block(store, row)
    with pytest.raises(InvalidInput, match="is registered"):
        save_external_block(store, row)
    save_external_block(store, ExternalBlockRow("ext", "image", None, [], "img:1", row.parameters, None), replace=True)
    [back] = list_external_blocks(store)
    assert (back.kind, back.image, back.command, back.parameters) == ("image", "img:1", [], row.parameters)
    assert delete_external_block(store, "ext") and list_external_blocks(store) == []


def test_every_media_field_of_a_new_sample_is_stored_and_read_back(store: Store) -> None:
    from labelblocks.model import MEDIA_FIELDS

    media = {"chart_type": "chart", "width": None, "height": None, "frequency": 16000.0, "values_count": 32000,
             "interval_ms": 0.0625, "total_length_ms": 2000.0}
    assert set(media) == set(MEDIA_FIELDS)
    [sid] = store.add_samples([NewSample(filename="a.wav", category="testing", content_hash="f" * 64,
                                         media_type="audio/wav", ext=".wav", **media)])
    back = store.get_sample(sid)
    assert {f: getattr(back, f) for f in MEDIA_FIELDS} == media


def test_media_fields_are_defined_once_and_the_store_and_sample_share_them() -> None:
    from typing import get_args

    from sqlalchemy import Float, Integer, String

    from labelblocks.media import MediaInfo
    from labelblocks.model import MEDIA_FIELDS, MediaFields, Sample
    from labelblocks.store.schema import samples

    for kind in (Sample, NewSample, MediaInfo):
        assert issubclass(kind, MediaFields)
        assert all((kind.model_fields[f].annotation, kind.model_fields[f].default)
                   == (MediaFields.model_fields[f].annotation, MediaFields.model_fields[f].default)
                   for f in MEDIA_FIELDS)
    # a sample's JSON keeps the protocol's order: head, the media fields, then content and times
    assert list(Sample.model_fields) == ["id", "filename", "category", "label", "bounding_boxes",
                                         "structured_labels", "metadata", "is_disabled", *MEDIA_FIELDS,
                                         "content_hash", "media_type", "created", "updated"]
    column_type = {int: Integer, float: Float, str: String}
    for f in MEDIA_FIELDS:
        info = MediaFields.model_fields[f]
        args = [a for a in get_args(info.annotation) if a is not type(None)] or [info.annotation]
        base = str if f == "chart_type" else args[0]
        col = samples.c[f]
        assert isinstance(col.type, column_type[base]), f
        assert col.nullable == (info.default is None), f
