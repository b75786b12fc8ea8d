"""Applying a job: each pending sample's steps' proposals composed into one change, written
atomically with the sample's status and who wrote what (its provenance), chunk by chunk.

What applying does to a sample is :func:`final_samples`: the sample without the action's earlier
contributions (:func:`labelblocks.provenance.strip`), with the steps' changes composed over it,
the action's metadata added, box scores left out and a new box dropped where someone took over
the action's box at that place. The same function describes a preview (the terminal, the page,
``proposals show``), so every count shown is what apply writes.

A proposal holds whole fields as the block saw the sample (all of its metadata, all of its
boxes), so a sample changed since the job proposed is left out (discarded, with why) rather
than have those changes undone; a sample deleted since is left out too.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from . import provenance
from .actions import MetadataItem
from .diff import SampleDiff, diff
from .errors import InvalidInput, NotFound
from .model import Sample, SampleChange
from .store import PreparedChanges, Store
from .store import jobs as job_store
from .store import proposals as proposal_store
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
                # a change that changes nothing is not written: the sample keeps its revision,
                # so results cached for it stay valid
                writes, records = final_writes(store, job_id, chunk, extra)
                writer.submit(functools.partial(_apply_chunk, store, job_id, chunk, writes, records,
                                                store.prepare_changes(writes, missing_ok=True, records=records), done))
                if on_progress:
                    on_progress("apply", start + len(chunk), len(pending))
        finally:
            writer.close()
    return sum(done)


def _apply_chunk(store: Store, job_id: int, chunk: list[int], writes: list[tuple[int, SampleChange]],
                 records: Mapping[int, str | None], prepared: PreparedChanges, done: list[int]) -> None:
    done.append(job_store.apply_chunk(store, job_id, chunk, writes, prepared, records))


@dataclass
class Final:
    """What applying a job does to one sample: the sample as stored now (``before``), as apply
    leaves it (``after``), and the provenance record written with it."""

    before: Sample
    after: Sample
    record: str | None
    record_changed: bool
    _diff: SampleDiff | None = field(default=None, repr=False, compare=False)

    def diff(self) -> SampleDiff:
        """What applying changes (computed once)."""
        if self._diff is None:
            self._diff = diff(self.before, self.after)
        return self._diff

    def change(self) -> SampleChange:
        """The fields of ``after`` that differ from ``before``."""
        b, a = self.before, self.after
        return SampleChange.model_construct(
            label=a.label if a.label != b.label else None,
            is_disabled=a.is_disabled if a.is_disabled != b.is_disabled else None,
            bounding_boxes=a.bounding_boxes if a.bounding_boxes != b.bounding_boxes else None,
            metadata=a.metadata if a.metadata != b.metadata else None,
            structured_labels=a.structured_labels if a.structured_labels != b.structured_labels else None)

    def writes(self) -> bool:
        return self.record_changed or not self.change().is_empty()


def final_samples(store: Store, job_id: int, chunk: Sequence[int], extra: Mapping[str, str] = {},
                  parsed: Mapping[int, Sequence[tuple[int, SampleChange]]] | None = None) -> list[Final]:
    """What applying job ``job_id`` does to each sample of ``chunk`` that exists (see the module's
    docstring); ``extra`` is the metadata the action sets after running."""
    job = job_store.get_job(store, job_id)
    if job is None:
        raise NotFound(f"no job {job_id}")
    blocks = {int(st.get("step", i)): str(st.get("block", f"step{i}"))
              for i, st in enumerate(job.definition.get("steps", []), 1)}
    replaces = job.definition.get("replacesEarlier", True)  # a run takes back its action's earlier contributions
    if parsed is None:
        # a chunk's proposals, each distinct text parsed once (labeling jobs repeat a few
        # changes many times); parsed changes are shared, so never modified below
        memo: dict[str, SampleChange] = {}
        load = proposal_store.load_change
        parsed = {sid: [(n, memo[t] if t in memo else memo.setdefault(t, load(t))) for n, t in items]
                  for sid, items in proposal_store.step_texts(store, job_id, chunk).items()}
    samples = {s.id: s for s in store.get_samples(list(chunk), missing_ok=True)}
    texts = store.provenance_texts(list(samples))
    out: list[Final] = []
    for sid in chunk:
        s = samples.get(sid)
        if s is None:
            continue
        text = texts.get(sid)
        record = provenance.load(text)
        base = provenance.strip(s, record, job.action) if replaces and provenance.mentions(text, job.action) \
            else provenance.Stripped(s, record)
        after, box_steps, field_steps = _compose(base.sample, parsed.get(sid, []), blocks)
        update: dict[str, Any] = {}
        if extra:
            update["metadata"] = {**after.metadata, **extra}
        if any(b.score is not None for b in after.bounding_boxes):  # scores stay in the job's record only
            update["bounding_boxes"] = [b.model_copy(update={"score": None}) for b in after.bounding_boxes]
        if update:
            after = after.model_copy(update=update)
        if base.taken:
            after = after.model_copy(update={"bounding_boxes": provenance.drop_taken(
                base.sample, after.bounding_boxes, base.taken)})
        if after is s:
            out.append(Final(s, s, text, False))
            continue
        new = provenance.dump(provenance.contribute(base.sample, base.record, after,
                                                    provenance.action_writer(job.action, job_id, None),
                                                    box_steps, field_steps))
        # the same values written again by a later job of the action: nothing to write
        same = new == text or (after == s and provenance.same_contributions(new, text))
        out.append(Final(s, after, new, not same))
    return out


def _compose(base: Sample, steps: Sequence[tuple[int, SampleChange]],
             blocks: Mapping[int, str]) -> tuple[Sample, dict[provenance.BoxKey, int], dict[str, int]]:
    """``base`` after the chain's changes, and which step wrote each box and field. A metadata
    key that more than one step wrote keeps each step's value under ``BLOCK.KEY`` too (the
    last step's value stays under the key itself), so no step's provenance is overwritten."""
    if not steps:
        return base, {}, {}
    seq: list[tuple[int, Sample]] = []
    cur = base
    for n, ch in steps:
        if not ch.is_empty():
            cur = cur.with_change(ch)
            seq.append((n, cur))
    if not seq:
        return base, {}, {}
    writers: dict[str, list[tuple[int, str | None]]] = {}
    prev = base
    for n, s in seq:
        if s.metadata != prev.metadata:
            for key in set(s.metadata) | set(prev.metadata):
                if s.metadata.get(key) != prev.metadata.get(key):
                    writers.setdefault(key, []).append((n, s.metadata.get(key)))
        prev = s
    shared = {key: w for key, w in writers.items() if len(w) > 1}
    if shared:
        md = dict(cur.metadata)
        for key, ws in shared.items():
            for n, value in ws:
                if value is not None:
                    md[f"{blocks.get(n, f'step{n}')}.{key}"] = value
        cur = cur.model_copy(update={"metadata": md})
        seq[-1] = (seq[-1][0], cur)
    box_steps, field_steps = provenance.chain_steps(base, seq)
    return cur, box_steps, field_steps


def final_writes(store: Store, job_id: int, chunk: Sequence[int], extra: Mapping[str, str] = {}
                 ) -> tuple[list[tuple[int, SampleChange]], dict[int, str | None]]:
    """What applying writes to the samples of ``chunk``: the changes (only those that change
    something) and the provenance records that change. Samples whose proposals set only labels
    or the disabled state (a classifier's, a filter's), holding nothing of the action's, are
    computed from three columns without reading the whole sample (:func:`_label_only`); the
    rest as :func:`final_samples` describes them."""
    job = job_store.get_job(store, job_id)
    if job is None:
        raise NotFound(f"no job {job_id}")
    memo: dict[str, SampleChange] = {}
    load = proposal_store.load_change
    parsed = {sid: [(n, memo[t] if t in memo else memo.setdefault(t, load(t))) for n, t in items]
              for sid, items in proposal_store.step_texts(store, job_id, chunk).items()}
    light = {} if extra else store.label_states(chunk)
    writes: list[tuple[int, SampleChange]] = []
    records: dict[int, str | None] = {}
    rest: list[int] = []
    done: dict[tuple[Any, ...], tuple[SampleChange, str | None] | None] = {}
    light_records: dict[str | None, bool] = {None: True}
    for sid in chunk:
        steps = parsed.get(sid, [])
        state = light.get(sid)
        if state is None or not all(_label_only(c) for _, c in steps):
            rest.append(sid)
            continue
        text = state[2]
        if not job.definition.get("replacesEarlier", True):
            rest.append(sid)
            continue
        if text not in light_records:  # the action wrote nothing but labels and disabled states here
            rec = provenance.load(text)
            light_records[text] = not provenance.mentions(provenance.dump(
                {k: v for k, v in rec.items() if k not in ("label", "disabled")}), job.action)
        if not light_records[text]:
            rest.append(sid)
            continue
        key = (state, *(id(c) for _, c in steps))
        if key not in done:
            done[key] = _label_write(state, steps, job.action, provenance.action_writer(job.action, job_id, None))
        out = done[key]
        if out is not None:
            writes.append((sid, out[0]))
            records[sid] = out[1]
    if rest:
        for f in final_samples(store, job_id, rest, extra, parsed=parsed):
            if f.writes():
                writes.append((f.before.id, f.change()))
                if f.record_changed:
                    records[f.before.id] = f.record
        order = {sid: i for i, sid in enumerate(chunk)}
        writes.sort(key=lambda w: order[w[0]])
    return writes, records


def _label_only(ch: SampleChange) -> bool:
    return ch.bounding_boxes is None and ch.metadata is None and ch.structured_labels is None


def _label_write(state: tuple[str | None, bool, str | None], steps: Sequence[tuple[int, SampleChange]],
                 action: str, writer: provenance.Writer) -> tuple[SampleChange, str | None] | None:
    """:func:`final_samples` for a sample whose steps set only its label or disabled state and
    where the action wrote nothing else: the change and the record to write (None: nothing)."""
    stored_label, stored_disabled, text = state
    record = provenance.load(text)
    label, disabled = stored_label, stored_disabled
    if provenance.mentions(text, action):  # its label or disabled state put back as they were before it
        now = Sample.model_construct(id=0, filename="", label=label, is_disabled=disabled, bounding_boxes=[],
                                     structured_labels=[], metadata={})
        base = provenance.strip(now, {k: v for k, v in record.items() if k in ("label", "disabled")}, action)
        label, disabled = base.sample.label, base.sample.is_disabled
        record = {k: v for k, v in record.items() if k not in ("label", "disabled")}
        record.update((k, base.record[k]) for k in ("label", "disabled") if base.record.get(k))
    label_step = disabled_step = None
    new_label, new_disabled = label, disabled
    for n, ch in steps:
        if ch.label is not None and ch.label != new_label:
            new_label, label_step = ch.label, n
        if ch.is_disabled is not None and ch.is_disabled != new_disabled:
            new_disabled, disabled_step = ch.is_disabled, n
    if new_label == stored_label and new_disabled == stored_disabled and (label, disabled) == (stored_label, stored_disabled):
        return None
    fields = {"label": label_step, "isDisabled": disabled_step}
    before = Sample.model_construct(id=0, filename="", label=label, is_disabled=disabled, bounding_boxes=[],
                                    structured_labels=[], metadata={})
    after = before.model_copy(update={"label": new_label, "is_disabled": new_disabled})
    new = provenance.dump(provenance.contribute(before, record, after, writer,
                                                field_steps={k: v for k, v in fields.items() if v is not None}))
    change = SampleChange.model_construct(label=new_label if new_label != stored_label else None,
                                          is_disabled=new_disabled if new_disabled != stored_disabled else None,
                                          bounding_boxes=None, metadata=None, structured_labels=None)
    if change.is_empty() and provenance.same_contributions(new, text):
        return None
    return change, new


@dataclass
class Applied:
    """What applying a reviewed job did: samples applied, and those left out (changed or
    deleted since the job proposed)."""

    applied: int
    left_out: list[int]


def apply_reviewed(store: Store, job_id: int, ids: Sequence[int] | None = None,
                   on_progress: ProgressFn | None = None) -> Applied:
    """Apply a reviewed job's proposals (all pending, or those of ``ids``: the page's accepted
    samples, the CLI's --ids) with its action's metadata: the one path of `proposals apply`
    and the review page's "Apply accepted"."""
    job = job_store.get_job(store, job_id)
    if job is None:
        raise NotFound(f"no job {job_id}")
    if job.status == "discarded":
        raise InvalidInput(f"job {job_id}'s proposals were discarded")
    before = job_store.job_state(store, job_id).discarded
    n = apply_job(store, job_id, ids=ids, set_metadata=action_metadata(store, job.action), on_progress=on_progress) \
        if ids is None or ids else 0
    return Applied(n, sorted(job_store.job_state(store, job_id).discarded - before))


def action_metadata(store: Store, action: str) -> list[MetadataItem]:
    """The metadata action ``action`` sets on the samples it applies to (none once it was deleted)."""
    from .actions import get_action

    try:
        return list(get_action(store, action).set_metadata)
    except NotFound:
        return []


def job_finals(store: Store, job_id: int, ids: Sequence[int] | None = None) -> list[Final]:
    """What applying job ``job_id`` (its action's metadata included) does to each of ``ids``
    (all of the job's samples with a proposal when None): the one description of a preview."""
    job = job_store.get_job(store, job_id)
    if job is None:
        raise NotFound(f"no job {job_id}")
    if ids is None:
        ids = sorted(proposal_store.proposal_texts(store, job_id))
    extra = {m.key: m.value for m in action_metadata(store, job.action)}
    out: list[Final] = []
    for start in range(0, len(ids), APPLY_ROWS):
        out += final_samples(store, job_id, ids[start : start + APPLY_ROWS], extra)
    return out


def pending_finals(store: Store, job_id: int) -> list[Final]:
    """What applying the job writes now: its pending samples with a proposal, less those
    changed since it proposed (apply leaves them out)."""
    pending = set(job_store.job_state(store, job_id).pending())
    finals = [f for f in job_finals(store, job_id) if f.before.id in pending]
    stale = proposal_store.stale_samples(store, job_id, [f.before.id for f in finals])
    return [f for f in finals if f.before.id not in stale]


def total_diff(finals: Sequence[Final]) -> dict[str, int]:
    """What applying writes over all of ``finals``: samples changed, boxes added, removed and
    renamed, labels, disabled states and metadata values changed."""
    out = {"samples": 0, "boxesAdded": 0, "boxesRemoved": 0, "boxesRenamed": 0, "labels": 0, "disabled": 0,
           "enabled": 0, "structuredLabels": 0, "metadataValues": 0}
    for f in finals:
        d = f.diff()
        if d.is_empty():
            continue
        out["samples"] += 1
        counts = d.counts()
        out["boxesAdded"] += counts.get("added", 0)
        out["boxesRemoved"] += counts.get("removed", 0)
        out["boxesRenamed"] += counts.get("renamed", 0)
        out["labels"] += d.label is not None
        out["disabled"] += d.disabled is not None and d.disabled[1]
        out["enabled"] += d.disabled is not None and not d.disabled[1]
        out["structuredLabels"] += d.structured is not None
        out["metadataValues"] += len(d.metadata)
    return out
