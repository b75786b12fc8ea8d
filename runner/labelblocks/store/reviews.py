"""Reviews: every statement on the reviews and sign-in tokens tables (the review page's
decisions on a job's proposals, and its one-time sign-in links)."""

from __future__ import annotations

import hashlib
import secrets
import time
from collections.abc import Sequence

from sqlalchemy import and_, delete, insert, select

from . import Store
from .schema import job_samples, reviews, sign_in_tokens

DECISIONS = ("accepted", "rejected")
TOKEN_SECONDS = 600  # a sign-in link works once, within this many seconds


def decide(store: Store, job_id: int, sample_ids: Sequence[int], decision: str | None) -> None:
    """Record ``decision`` (accepted, rejected, or None to forget it) for the job's samples."""
    if decision is not None and decision not in DECISIONS:
        raise ValueError(f"decision: expected one of {', '.join(DECISIONS)}, got {decision!r}")
    now = time.time()
    with store.transaction() as conn:
        conn.execute(delete(reviews).where(and_(reviews.c.job_id == job_id, reviews.c.sample_id.in_(list(sample_ids)))))
        if decision is not None and sample_ids:
            conn.execute(insert(reviews), [{"job_id": job_id, "sample_id": sid, "decision": decision, "decided_at": now}
                                           for sid in sample_ids])


def decisions(store: Store, job_id: int) -> dict[int, str]:
    """{sample id: decision} of the job's reviewed samples."""
    with store.engine.connect() as conn:
        return {int(sid): str(d) for sid, d in conn.execute(
            select(reviews.c.sample_id, reviews.c.decision).where(reviews.c.job_id == job_id))}


def left_out(store: Store, job_id: int, ids: Sequence[int]) -> dict[int, str]:
    """{sample id: why} for those of ``ids`` the job left out (discarded: changed or deleted
    since it ran, or its proposals discarded)."""
    if not ids:
        return {}
    with store.engine.connect() as conn:
        rows = conn.execute(select(job_samples.c.sample_id, job_samples.c.error).where(and_(
            job_samples.c.job_id == job_id, job_samples.c.status == "discarded",
            job_samples.c.sample_id.in_(list(ids)))))
        return {int(sid): str(err or "changed or deleted since the job ran") for sid, err in rows}


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_sign_in_token(store: Store) -> str:
    """A one-time sign-in token, valid TOKEN_SECONDS; only its hash is stored."""
    token = secrets.token_urlsafe(24)
    now = time.time()
    with store.transaction() as conn:
        conn.execute(delete(sign_in_tokens).where(sign_in_tokens.c.expires_at < now))
        conn.execute(insert(sign_in_tokens).values(token_hash=_hash(token), expires_at=now + TOKEN_SECONDS))
    return token


def use_sign_in_token(store: Store, token: str) -> bool:
    """Whether ``token`` is a valid sign-in token; it is used up either way."""
    with store.transaction() as conn:
        row = conn.execute(select(sign_in_tokens.c.expires_at).where(
            sign_in_tokens.c.token_hash == _hash(token))).first()
        conn.execute(delete(sign_in_tokens).where(sign_in_tokens.c.token_hash == _hash(token)))
    return row is not None and float(row[0]) >= time.time()
