"""Evaluations: every statement on the evaluations table (a job's latest evaluation document,
as :mod:`labelblocks.evaluate` makes it)."""

from __future__ import annotations

import time
from typing import Any

import orjson
from sqlalchemy import delete, insert, select

from . import Store
from .schema import evaluations, jobs


def save_evaluation(store: Store, job_id: int, document: dict[str, Any]) -> float:
    """Store ``document`` as the job's evaluation, replacing an earlier one; returns its time."""
    now = time.time()
    with store.transaction() as conn:
        conn.execute(delete(evaluations).where(evaluations.c.job_id == job_id))
        conn.execute(insert(evaluations).values(job_id=job_id, created_at=now, document=orjson.dumps(document, option=orjson.OPT_SERIALIZE_NUMPY).decode()))
    return now


def get_evaluation(store: Store, job_id: int) -> tuple[float, dict[str, Any]] | None:
    """(when, document) of the job's evaluation, or None when it has none."""
    with store.engine.connect() as conn:
        row = conn.execute(select(evaluations.c.created_at, evaluations.c.document)
                           .where(evaluations.c.job_id == job_id)).first()
    return None if row is None else (float(row[0]), orjson.loads(row[1]))


def latest_for_action(store: Store, action: str) -> tuple[int, float, dict[str, Any]] | None:
    """(job, when, document) of the newest evaluation of a job of ``action``, or None."""
    with store.engine.connect() as conn:
        row = conn.execute(select(evaluations.c.job_id, evaluations.c.created_at, evaluations.c.document)
                           .join(jobs, jobs.c.id == evaluations.c.job_id).where(jobs.c.action == action)
                           .order_by(evaluations.c.created_at.desc()).limit(1)).first()
    return None if row is None else (int(row[0]), float(row[1]), orjson.loads(row[2]))
