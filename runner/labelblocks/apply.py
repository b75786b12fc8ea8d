"""Applying a job: each pending sample's steps' proposals composed into one change, written
atomically with the sample's status, chunk by chunk.

A proposal holds whole fields as the block saw the sample (all of its metadata, all of its
boxes), so a sample changed since the job proposed is left out (discarded, with why) rather
than have those changes undone; a sample deleted since is left out too.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from .actions import MetadataItem
from .errors import NotFound
from .model import SampleChange, compose
from .store import PreparedChanges, Store
from .store import jobs as job_store
from .store.writer import BackgroundWriter, batch_tuning

ProgressFn = Callable[[str, int, int], None]  # (phase, done, total)

APPLY_ROWS = 20_000  # samples applied per transaction


def apply_job(store: Store, job_id: int, ids: Sequence[int] | None = None, set_metadata: Sequence[MetadataItem] = (),
              on_progress: ProgressFn | None = None, batch: int | None = None) -> int:
    """Apply the job's composed proposals to pending samples (all, or ``ids``), each sample
    atomically with its status; returns how many were applied.

    Args:
        store: the project's store.
        job_id: the job whose proposals to apply.
        ids: only these of the job's samples (NotFound for one that is not the job's).
        set_metadata: metadata the action sets on every sample it applies.
        on_progress: called with ("apply", done, total) after each chunk is prepared.
        batch: samples per transaction (default APPLY_ROWS).
    """
    state = job_store.job_state(store, job_id)
    pending = state.pending()
    if ids is not None:
        wanted = set(ids)
        unknown = wanted - set(state.ids)
        if unknown:
            raise NotFound(f"samples {', '.join(map(str, sorted(unknown)[:10]))} are not part of job {job_id}")
        pending = [i for i in pending if i in wanted]
    extra = {m.key: m.value for m in set_metadata}
    # each chunk is written by a background thread while the next one is read and prepared
    done: list[int] = []  # the samples applied, per chunk
    writer = BackgroundWriter()
    with batch_tuning():
        try:
            batch = batch or APPLY_ROWS
            for start in range(0, len(pending), batch):
                chunk = pending[start : start + batch]
                items = final_changes(store, job_id, chunk, extra)
                # a change that changes nothing is not written: the sample keeps its revision,
                # so results cached for it stay valid
                writes = [it for it in items if not it[1].is_empty()]
                writer.submit(functools.partial(_apply_chunk, store, job_id, chunk, writes,
                                                store.prepare_changes(writes, missing_ok=True), done))
                if on_progress:
                    on_progress("apply", start + len(chunk), len(pending))
        finally:
            writer.close()
    return sum(done)


def _apply_chunk(store: Store, job_id: int, chunk: list[int], writes: list[tuple[int, SampleChange]],
                 prepared: PreparedChanges, done: list[int]) -> None:
    done.append(job_store.apply_chunk(store, job_id, chunk, writes, prepared))


def final_changes(store: Store, job_id: int, chunk: list[int],
                  extra: Mapping[str, str]) -> list[tuple[int, SampleChange]]:
    """What applying the job does to each sample of ``chunk``: its steps' changes composed,
    with the action's metadata (``extra``) added and box scores left out."""
    # a chunk's proposals, each distinct text parsed once (labeling jobs repeat a few
    # changes many times); parsed changes are shared, so never modified below
    memo: dict[str, SampleChange] = {}
    load = job_store.load_change
    parsed = {sid: [memo[t] if t in memo else memo.setdefault(t, load(t)) for t in texts]
              for sid, texts in job_store.proposal_texts(store, job_id, chunk).items()}
    need_md = [sid for sid in chunk if extra and all(c.metadata is None for c in parsed.get(sid, []))]
    base_md = {s.id: s.metadata for s in store.get_samples(need_md, missing_ok=True)} if need_md else {}
    items: list[tuple[int, SampleChange]] = []
    for sid in chunk:
        changes = parsed.get(sid)
        final = changes[0] if changes and len(changes) == 1 else compose(changes or [])
        update: dict[str, Any] = {}
        if extra:
            update["metadata"] = {**(final.metadata if final.metadata is not None else base_md.get(sid, {})),
                                  **extra}
        if final.bounding_boxes is not None and any(b.score is not None for b in final.bounding_boxes):
            # scores stay in the job's record only
            update["bounding_boxes"] = [b.model_copy(update={"score": None}) for b in final.bounding_boxes]
        items.append((sid, final.model_copy(update=update) if update else final))
    return items
