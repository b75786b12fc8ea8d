"""The store's schema (SQLAlchemy Core) and its migrations.

Written for SQLite first, in portable Core so that PostgreSQL can serve the same schema.
Each migration is a function applied once, in order, inside one transaction; the applied
version is kept in the ``schema_migrations`` table.
"""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy import (
    Boolean,
    Column,
    Connection,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    select,
)

metadata = MetaData()

schema_migrations = Table(
    "schema_migrations",
    metadata,
    Column("version", Integer, primary_key=True),
    Column("applied_at", Float, nullable=False),
)

samples = Table(
    "samples",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("filename", String, nullable=False),
    Column("category", String, nullable=False),
    Column("label", String, nullable=True),
    Column("bounding_boxes", Text, nullable=False, default="[]"),
    Column("structured_labels", Text, nullable=False, default="[]"),
    Column("is_disabled", Boolean, nullable=False, default=False),
    Column("chart_type", String, nullable=False),
    Column("media_type", String, nullable=False),
    Column("ext", String, nullable=False),
    Column("width", Integer, nullable=True),
    Column("height", Integer, nullable=True),
    Column("frequency", Float, nullable=True),
    Column("values_count", Integer, nullable=True),
    Column("interval_ms", Float, nullable=True),
    Column("total_length_ms", Float, nullable=True),
    Column("content_hash", String(64), nullable=False),
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
    Index("ix_samples_content_hash", "content_hash"),
    Index("ix_samples_category", "category"),
    Index("ix_samples_label", "label"),
)

sample_metadata = Table(
    "sample_metadata",
    metadata,
    Column("sample_id", Integer, ForeignKey("samples.id", ondelete="CASCADE"), primary_key=True),
    Column("key", String, primary_key=True),
    Column("value", String, nullable=False),
    Index("ix_sample_metadata_key_value", "key", "value", "sample_id"),
)


actions = Table(
    "actions",
    metadata,
    Column("name", String, primary_key=True),
    Column("definition", Text, nullable=False),
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
)

jobs = Table(
    "jobs",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("action", String, nullable=False),
    Column("kind", String, nullable=False),  # preview | run
    Column("status", String, nullable=False),  # running | completed | failed | interrupted | discarded
    Column("definition", Text, nullable=False),  # the action with resolved, non-secret parameters
    Column("definition_hash", String(64), nullable=False),
    Column("pid", Integer, nullable=True),
    Column("usage", Text, nullable=False, default="{}"),
    Column("error", Text, nullable=True),
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
    Index("ix_jobs_action", "action", "kind", "status"),
)

job_samples = Table(
    "job_samples",
    metadata,
    Column("job_id", Integer, ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True),
    Column("sample_id", Integer, primary_key=True),
    Column("status", String, nullable=False),  # pending | failed | applied
    Column("failed_step", Integer, nullable=True),
    Column("error", Text, nullable=True),
    Index("ix_job_samples_status", "job_id", "status"),
)

proposals = Table(
    "proposals",
    metadata,
    Column("job_id", Integer, ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True),
    Column("sample_id", Integer, primary_key=True),
    Column("step", Integer, primary_key=True),
    Column("change", Text, nullable=False),
    Column("record", Text, nullable=True),
    Column("cache_key", String(64), nullable=True),
    Index("ix_proposals_cache_key", "cache_key"),
)


def _v1(conn: Connection) -> None:
    for t in (samples, sample_metadata):
        t.create(conn)


Migration = Callable[[Connection], None]

def _v2(conn: Connection) -> None:
    for t in (actions, jobs, job_samples, proposals):
        t.create(conn)


MIGRATIONS: list[tuple[int, Migration]] = [
    (1, _v1),
    (2, _v2),
]


def current_version(conn: Connection) -> int:
    schema_migrations.create(conn, checkfirst=True)
    v = conn.execute(select(schema_migrations.c.version).order_by(schema_migrations.c.version.desc())).first()
    return int(v[0]) if v else 0


def latest_version() -> int:
    return MIGRATIONS[-1][0]
