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
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    inspect,
    select,
)

from .org_schema import ORG_TABLES
from .org_schema import metadata as org_metadata
from .packed import pack_ids

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
    # who wrote each box, label and metadata value (labelblocks.provenance; JSON, NULL: nobody recorded); v15
    Column("provenance", Text, nullable=True),
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
    # the job's selected sample ids, packed (see labelblocks.runner.pack_ids); v3
    Column("sample_ids", LargeBinary, nullable=True),
    Index("ix_jobs_action", "action", "kind", "status"),
)

job_samples = Table(
    "job_samples",
    metadata,
    Column("job_id", Integer, ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True),
    Column("sample_id", Integer, primary_key=True),
    # only samples that left "pending": failed | discarded | skipped (applied ones are in job_applied)
    Column("status", String, nullable=False),
    Column("failed_step", Integer, nullable=True),
    Column("error", Text, nullable=True),
    Index("ix_job_samples_status", "job_id", "status"),
)

# one row per applying transaction: the sample ids it applied, packed (v3)
job_applied = Table(
    "job_applied",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("job_id", Integer, ForeignKey("jobs.id", ondelete="CASCADE"), nullable=False),
    Column("sample_ids", LargeBinary, nullable=False),
    # when the chunk's transaction wrote (v7): a sample not written since (updated_at <= it) is
    # as the job left it, and a later run of the same action passes it over
    Column("applied_at", Float, nullable=True),
    Index("ix_job_applied_job", "job_id"),
)

# One row per sample and step of a job. No foreign key to jobs (v6): checking it on every row
# cost more than half of what writing the row does, and only the runner and the API write
# proposals, for jobs they have just read. ``revision`` is the sample's updated_at that the
# step computed the change from (NULL: not reusable); with the step's cache key in job_steps it
# lets a later job reuse the change (v6; until v5 a 58-character key per row did, which
# doubled what a proposal writes).
proposals = Table(
    "proposals",
    metadata,
    Column("job_id", Integer, primary_key=True),
    Column("sample_id", Integer, primary_key=True),
    Column("step", Integer, primary_key=True),
    Column("change", Text, nullable=False),
    Column("record", Text, nullable=True),
    Column("revision", Float, nullable=True),
)

# the cache key of each step a job ran (v6): a hash of the step's block, version and parameters
# and of every earlier step's
job_steps = Table(
    "job_steps",
    metadata,
    Column("job_id", Integer, primary_key=True),
    Column("step", Integer, primary_key=True),
    Column("cache_key", String(64), nullable=False),
    Index("ix_job_steps_cache_key", "cache_key"),
)


# one row per `labelblocks split` that wrote: the samples it placed, packed (v4). A sample in
# any of them is "assigned": later splits never move it.
split_runs = Table(
    "split_runs",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("options", Text, nullable=False),
    Column("sample_ids", LargeBinary, nullable=False),
    Column("created_at", Float, nullable=False),
)


# project API keys for the HTTP API (v5): only a hash of each key is stored
api_keys = Table(
    "api_keys",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("name", String, nullable=False),
    Column("key_hash", String(64), nullable=False, unique=True),
    Column("prefix", String(16), nullable=False),  # the key's first characters, to tell keys apart
    Column("created_at", Float, nullable=False),
    Column("revoked_at", Float, nullable=True),
    Column("last_used_at", Float, nullable=True),
)

# blocks that run outside the process (v5): a program or a container image with a parameters.json
external_blocks = Table(
    "external_blocks",
    metadata,
    Column("name", String, primary_key=True),
    Column("kind", String, nullable=False),  # command | image
    Column("directory", String, nullable=True),  # where the command runs (command blocks)
    Column("command", Text, nullable=True),  # JSON list: the program and its fixed arguments
    Column("image", String, nullable=True),
    Column("parameters", Text, nullable=False),  # the parameters.json, validated
    Column("timeout", Float, nullable=True),  # seconds a step may run
    Column("created_at", Float, nullable=False),
)


def _v1(conn: Connection) -> None:
    for t in (samples, sample_metadata):
        t.create(conn)


Migration = Callable[[Connection], None]

def _v2(conn: Connection) -> None:
    for t in (actions, jobs, job_samples):
        t.create(conn)
    # proposals as v2 to v5 had them; _v6 rebuilds the table
    conn.exec_driver_sql(
        "CREATE TABLE proposals (job_id INTEGER NOT NULL, sample_id INTEGER NOT NULL, step INTEGER NOT NULL, "
        "change TEXT NOT NULL, record TEXT, cache_key VARCHAR(64), PRIMARY KEY (job_id, sample_id, step), "
        "FOREIGN KEY(job_id) REFERENCES jobs (id) ON DELETE CASCADE)")
    conn.exec_driver_sql("CREATE INDEX ix_proposals_cache_key ON proposals (cache_key)")


def _v3(conn: Connection) -> None:
    """Jobs keep their sample list packed in one column and record applied samples per
    transaction, instead of one status row per sample (a job of 100,000 samples no longer
    writes 100,000 rows before its first step, nor updates them when applied)."""
    cols = {r[1] for r in conn.exec_driver_sql("PRAGMA table_info(jobs)")}
    if "sample_ids" not in cols:
        conn.exec_driver_sql("ALTER TABLE jobs ADD COLUMN sample_ids BLOB")
    job_applied.create(conn)

    for (job_id,) in conn.exec_driver_sql("SELECT id FROM jobs").all():
        rows = conn.exec_driver_sql("SELECT sample_id, status FROM job_samples WHERE job_id = ?", (job_id,)).all()
        conn.exec_driver_sql("UPDATE jobs SET sample_ids = ? WHERE id = ?", (pack_ids(sorted(r[0] for r in rows)), job_id))
        applied = [r[0] for r in rows if r[1] == "applied"]
        if applied:
            conn.exec_driver_sql("INSERT INTO job_applied (job_id, sample_ids) VALUES (?, ?)", (job_id, pack_ids(sorted(applied))))
    conn.exec_driver_sql("DELETE FROM job_samples WHERE status IN ('pending', 'applied')")


def _v4(conn: Connection) -> None:
    split_runs.create(conn)


def _v5(conn: Connection) -> None:
    api_keys.create(conn)
    external_blocks.create(conn)


def _v6(conn: Connection) -> None:
    """Proposals lose their foreign key to jobs and their per-row cache key: each keeps the
    sample revision it was computed from, and job_steps the step's key (SQLite rebuilds a table
    to drop a constraint)."""
    job_steps.create(conn)
    conn.exec_driver_sql("DROP INDEX IF EXISTS ix_proposals_cache_key")
    conn.exec_driver_sql("ALTER TABLE proposals RENAME TO proposals_v5")
    proposals.create(conn)
    # a v5 key is "<32 hex of the step>:<sample id>:<repr of the revision>"
    conn.exec_driver_sql(
        "INSERT INTO proposals (job_id, sample_id, step, change, record, revision) "
        "SELECT job_id, sample_id, step, change, record, CASE WHEN cache_key IS NULL THEN NULL "
        "ELSE CAST(substr(cache_key, 35 + length(CAST(sample_id AS TEXT))) AS REAL) END FROM proposals_v5")
    conn.exec_driver_sql("INSERT OR IGNORE INTO job_steps (job_id, step, cache_key) "
                         "SELECT DISTINCT job_id, step, substr(cache_key, 1, 32) FROM proposals_v5 "
                         "WHERE cache_key IS NOT NULL")
    conn.exec_driver_sql("DROP TABLE proposals_v5")


def _v7(conn: Connection) -> None:
    """job_applied records when each chunk was applied (a project made at v4 or later by this
    version has the column already)."""
    columns = {r[1] for r in conn.exec_driver_sql("PRAGMA table_info(job_applied)")}
    if "applied_at" not in columns:
        conn.exec_driver_sql("ALTER TABLE job_applied ADD COLUMN applied_at REAL")


# What each step's block read of each sample (v8), for blocks that declare it (Block.reads):
# a result is reused for a sample whose read fields digest (input_key) matches, under the same
# block, version and parameters (step_key), whatever else of the sample changed.
step_inputs = Table(
    "step_inputs",
    metadata,
    Column("step_key", String(32), nullable=False),
    Column("input_key", String(32), nullable=False),
    Column("job_id", Integer, nullable=False),
    Column("step", Integer, nullable=False),
    Column("sample_id", Integer, nullable=False),
    Index("ix_step_inputs_key", "step_key", "input_key"),
    Index("ix_step_inputs_job", "job_id"),
)


def _v8(conn: Connection) -> None:
    step_inputs.create(conn, checkfirst=True)


# A job's latest evaluation (v9): the document `labelblocks evaluate` printed, served by the
# server at /v1/api/{project}/jobs/{job}/evaluation.
evaluations = Table(
    "evaluations",
    metadata,
    Column("job_id", Integer, primary_key=True),
    Column("created_at", Float, nullable=False),
    Column("document", Text, nullable=False),
)


def _v9(conn: Connection) -> None:
    evaluations.create(conn, checkfirst=True)


# A person's decision on a preview job's proposal for one sample (v10): the review page's
# Accept / Reject; "Apply accepted" applies the accepted ones.
reviews = Table(
    "reviews",
    metadata,
    Column("job_id", Integer, ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True),
    Column("sample_id", Integer, primary_key=True),
    Column("decision", String, nullable=False),  # accepted | rejected
    Column("decided_at", Float, nullable=False),
    Index("ix_reviews_decision", "job_id", "decision"),
)

# One-time sign-in links of the review page (v10): `labelblocks review` prints one; only its
# hash is kept, and it is deleted when used or expired.
sign_in_tokens = Table(
    "sign_in_tokens",
    metadata,
    Column("token_hash", String(64), primary_key=True),
    Column("expires_at", Float, nullable=False),
)


def _v10(conn: Connection) -> None:
    reviews.create(conn, checkfirst=True)
    sign_in_tokens.create(conn, checkfirst=True)


# Learn blocks (v11): models trained on the project's samples (`labelblocks learn`), with what
# they were trained on and their metadata in the protocol's shape.
learn_blocks = Table(
    "learn_blocks",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("kind", String, nullable=False),  # anomaly
    Column("name", String, nullable=False),
    Column("created_at", Float, nullable=False),
    Column("extractor", Text, nullable=False),  # {name, version, parameters, key}
    Column("params", Text, nullable=False),  # training parameters (clusters, axes, filter)
    Column("training", LargeBinary, nullable=False),  # the sample ids trained on, packed
    Column("model", Text, nullable=False),  # scale, mean, clusters, axes
    Column("metadata", Text, nullable=False),  # the protocol's anomaly metadata document
)

# Features per (extractor key, sample content) (v11): a file's features are computed once per
# extractor and parameters; float32 [windows, dim], row-major.
features = Table(
    "features",
    metadata,
    Column("extractor_key", String(32), primary_key=True),
    Column("content_hash", String(64), primary_key=True),
    Column("windows", Integer, nullable=False),
    Column("dim", Integer, nullable=False),
    Column("data", LargeBinary, nullable=False),
)


def _v11(conn: Connection) -> None:
    learn_blocks.create(conn, checkfirst=True)
    features.create(conn, checkfirst=True)


# Published model versions (v12): an action's steps and parameters frozen as ACTION/VERSION,
# what `labelblocks serve` answers inference requests with.
model_versions = Table(
    "model_versions",
    metadata,
    Column("action", String, primary_key=True),
    Column("version", Integer, primary_key=True),
    Column("definition", Text, nullable=False),
    Column("created_at", Float, nullable=False),
)

# Every inference the server answered (v12), with custom metadata attached afterwards.
inferences = Table(
    "inferences",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("created_at", Float, nullable=False),
    Column("model", String, nullable=False),
    Column("latency_ms", Float, nullable=False),
    Column("error", Text, nullable=True),
    Column("classes", Text, nullable=False),  # JSON list: the predicted classes
    Column("confidences", Text, nullable=False),  # JSON list, in the same order
    Column("width", Integer, nullable=True),
    Column("height", Integer, nullable=True),
    Column("content_hash", String(64), nullable=False),
    Column("media_type", String, nullable=False),
    Column("key_id", Integer, nullable=True),
    Column("image_kept", Boolean, nullable=False, default=False),
    Column("change", Text, nullable=False),  # the prediction as a SampleChange (boxes with scores)
    Index("ix_inferences_time", "created_at"),
    Index("ix_inferences_model", "model", "created_at"),
)

inference_metadata = Table(
    "inference_metadata",
    metadata,
    Column("inference_id", String(36), ForeignKey("inferences.id", ondelete="CASCADE"), primary_key=True),
    Column("field", String, primary_key=True),
    Column("value", String, nullable=False),
    Index("ix_inference_metadata_field", "field", "value"),
)


def _v12(conn: Connection) -> None:
    for t in (model_versions, inferences, inference_metadata):
        t.create(conn, checkfirst=True)


def _v13(conn: Connection) -> None:
    """The organization's tables (store/org_schema.py)."""
    for t in ORG_TABLES:
        t.create(conn, checkfirst=True)


# The samples `labelblocks sync` keeps (v14): each one's source object URL and the object's
# stamp when it was synced (a file's size and modification time, an object's ETag), written
# with the sample, so that a re-sync reads this one table and hashes only files whose stamp
# changed. The source URL and version a user filters on are the sample's metadata (source,
# source_etag); a sample uploaded by hand with such metadata is not the sync's to remove.
source_stamps = Table(
    "source_stamps",
    metadata,
    Column("sample_id", Integer, primary_key=True, autoincrement=False),
    Column("source", Text, nullable=False),
    Column("stamp", String, nullable=False),
)


def _v14(conn: Connection) -> None:
    source_stamps.create(conn, checkfirst=True)


# What `labelblocks sync SOURCE` remembers of each source (v15): the metadata its new files get
# (JSON), so that a later sync of the same source gives new files the same.
sync_sources = Table(
    "sync_sources",
    metadata,
    Column("source", Text, primary_key=True),
    Column("settings", Text, nullable=False),
    Column("updated_at", Float, nullable=False),
)


def _v15(conn: Connection) -> None:
    """Each sample records who wrote its boxes, labels and metadata (a project made at v15 or
    later has the column from v1's tables already); sync remembers each source's settings."""
    if "provenance" not in {c["name"] for c in inspect(conn).get_columns("samples")}:
        conn.exec_driver_sql("ALTER TABLE samples ADD COLUMN provenance TEXT")
    sync_sources.create(conn, checkfirst=True)


MIGRATIONS: list[tuple[int, Migration]] = [
    (1, _v1),
    (2, _v2),
    (3, _v3),
    (4, _v4),
    (5, _v5),
    (6, _v6),
    (7, _v7),
    (8, _v8),
    (9, _v9),
    (10, _v10),
    (11, _v11),
    (12, _v12),
    (13, _v13),
    (14, _v14),
    (15, _v15),
]


def create_all(conn: Connection) -> None:
    """Every table at the latest schema at once (a new PostgreSQL database)."""
    metadata.create_all(conn)
    org_metadata.create_all(conn)


def current_version(conn: Connection) -> int:
    schema_migrations.create(conn, checkfirst=True)
    v = conn.execute(select(schema_migrations.c.version).order_by(schema_migrations.c.version.desc())).first()
    return int(v[0]) if v else 0


def latest_version() -> int:
    return MIGRATIONS[-1][0]
