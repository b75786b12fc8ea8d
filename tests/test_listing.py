"""The listing (`samples list` without the store): the same samples as the store, for any
filter, and a start that imports neither SQLAlchemy nor pydantic."""

from __future__ import annotations

import random
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from labelblocks.constants import DB_NAME, SCHEMA_VERSION
from labelblocks.filters import MetadataCondition, SampleFilter
from labelblocks.listing import Listing, open_listing
from labelblocks.model import BoundingBox, StructuredLabel
from labelblocks.project import DATA_DIR, init_project
from labelblocks.store import NewSample, Store
from labelblocks.store.schema import MIGRATIONS

from .conftest import Cli, make_image

KEYS = ["site", "device", "reviewed"]
VALUES = ["a", "b", "c%", "d_e"]
LABELS = ["cat", "dog", ""]


@pytest.fixture(scope="module")
def mixed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Store, Listing]]:
    """80 samples: images and audio, labels, boxes, ranges, metadata, categories, disabled."""
    root = init_project(tmp_path_factory.mktemp("listing") / "proj") / DATA_DIR
    rnd = random.Random(7)
    new = []
    for i in range(80):
        audio = rnd.random() < 0.3
        media = ({"frequency": 16000.0, "values_count": 1600, "interval_ms": 0.0625, "total_length_ms": 100.0,
                  "chart_type": "chart"} if audio else {"width": 32, "height": 24})
        new.append(NewSample(
            filename=f"{rnd.choice(['x', 'y_z', '50%', 'a.b'])}{i}.{'wav' if audio else 'png'}",
            category=rnd.choice(["training", "validation", "testing"]), content_hash=f"{i:064x}",
            media_type="audio/wav" if audio else "image/png", ext=".wav" if audio else ".png",
            label=rnd.choice([*LABELS, None]),
            metadata={k: rnd.choice(VALUES) for k in KEYS if rnd.random() < 0.5}, **media))
    with Store.open(root) as store:
        ids = store.add_samples(new)
        for sid in ids[::5]:
            if store.get_sample(sid).width is not None:
                store.set_bounding_boxes(sid, [BoundingBox(label="cat", x=1, y=1, width=4, height=4)])
            else:
                store.set_structured_labels(sid, [StructuredLabel(start_index=0, end_index=9, label="dog")])
        store.set_disabled(ids[::7], True)
        listing = open_listing(root)
        assert listing is not None
        yield store, listing
        listing.close()


conditions = st.builds(MetadataCondition, key=st.sampled_from([*KEYS, "absent"]),
                       op=st.sampled_from(["eq", "neq"]),
                       values=st.lists(st.sampled_from([*VALUES, "zz"]), max_size=2, unique=True))
filters = st.builds(
    SampleFilter,
    metadata=st.lists(conditions, max_size=3),
    no_metadata=st.booleans(),
    combinator=st.sampled_from(["and", "or"]),
    labels=st.lists(st.sampled_from(LABELS), max_size=2, unique=True),
    unlabeled=st.booleans(),
    categories=st.lists(st.sampled_from(["training", "validation", "testing"]), max_size=2, unique=True),
    include_disabled=st.booleans(),
    disabled_only=st.booleans(),
    search=st.one_of(st.none(), st.sampled_from(["y_", "%", "A.B", "\\", "7"])),
    ids=st.one_of(st.none(), st.lists(st.integers(0, 90), max_size=12), st.just(list(range(1, 700, 2)))),
    min_id=st.one_of(st.none(), st.integers(0, 80)),
    max_id=st.one_of(st.none(), st.integers(0, 80)),
    data_type=st.sampled_from([None, "audio", "image"]),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(f=filters, limit=st.sampled_from([None, 1, 7, 50]), offset=st.integers(0, 30))
def test_the_listing_reads_what_the_store_reads(mixed: tuple[Store, Listing], f: SampleFilter, limit: int | None,
                                                 offset: int) -> None:
    store, listing = mixed
    assert listing.count(f) == store.count(f)
    ours = listing.list_samples(f, limit=limit, offset=offset)
    theirs = store.list_samples(f, limit=limit, offset=offset)
    assert [s.id for s in ours] == [s.id for s in theirs]
    for a, b in zip(ours, theirs, strict=True):
        assert (a.filename, a.category, a.label, a.is_disabled, a.metadata) == \
            (b.filename, b.category, b.label, b.is_disabled, b.metadata)
        assert len(a.bounding_boxes) == len(b.bounding_boxes)
        assert len(a.structured_labels) == len(b.structured_labels)


def test_the_listing_is_for_the_current_schema_only(tmp_path: Path) -> None:
    assert MIGRATIONS[-1][0] == SCHEMA_VERSION, "constants.SCHEMA_VERSION must name the store's last migration"
    data = init_project(tmp_path / "p") / DATA_DIR
    listing = open_listing(data)
    assert listing is not None
    listing.close()
    with sqlite3.connect(data / DB_NAME) as conn:  # as a project an older labelblocks left
        conn.execute("DELETE FROM schema_migrations WHERE version = ?", (SCHEMA_VERSION,))
    assert open_listing(data) is None
    assert open_listing(tmp_path / "nothing-here") is None


def test_samples_list_starts_without_sqlalchemy_or_pydantic(dataset_cli: Cli) -> None:
    """The table and the count: the same rows as the store's JSON, and neither heavy library
    imported (`python -X importtime` names every module a process imports)."""
    expected = [s["id"] for s in dataset_cli.json("samples", "list", "--where", "site=Paris")]
    assert expected
    for args in (["samples", "list", "--where", "site=Paris"], ["samples", "list", "--where", "site=Paris", "--count"]):
        r = subprocess.run([sys.executable, "-X", "importtime", "-m", "labelblocks", "--project",
                            str(dataset_cli.project), *args], capture_output=True, text=True, check=True)
        imported = {line.rsplit("|", 1)[-1].strip() for line in r.stderr.splitlines() if line.startswith("import time:")}
        assert "labelblocks.listing" in imported
        assert not {m for m in imported if m.split(".")[0] in ("sqlalchemy", "pydantic")}
        if "--count" in args:
            assert r.stdout.strip() == str(len(expected))
        else:
            assert [int(line.split()[0]) for line in r.stdout.splitlines()[1:]] == expected


@pytest.fixture
def dataset_cli(tmp_path: Path) -> Cli:
    """A SQLite project (the listing's), whatever dialect the suite's projects use."""
    cli = Cli(init_project(tmp_path / "sqlite-project", database=None))
    for i, site in enumerate(["Paris", "Lyon", "Paris", "Nice"]):
        make_image(tmp_path / "up" / site / f"{i}.png", seed=i)
    for site in ("Paris", "Lyon", "Nice"):
        cli("upload", str(tmp_path / "up" / site), "--metadata", f"site={site}")
    return cli
