"""Who wrote each box, label, structured label and metadata value of a sample: the records
that make an action applied twice equal to once.

A sample's record (kept by the store beside the sample, never part of the protocol's shapes)
holds one *entry* per contribution: who wrote it (``by``: an action's step in a job, or a
person), the value written (``v``), and what it replaced (``was``, with its writer). An entry
is valid while the sample still holds the value it wrote: a person's later edit makes the
value theirs without anyone touching the record, so every write path stays as it is.

Running action A on a sample computes from the sample *without A's valid contributions*
(:func:`strip`: A's boxes removed, the values A replaced put back) and records the new ones
(:func:`contribute`); everyone else's stay. A box someone took over from A (edited, or moved a
little: IoU >= :data:`TAKEOVER_IOU` with one A wrote) is kept, and a new box of A's at the same
place is dropped rather than added beside it (:func:`drop_taken`).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .model import BoundingBox, Sample, StructuredLabel, xywh_iou

TAKEOVER_IOU = 0.9  # a box at least this close to one an action wrote is that box, edited

Writer = dict[str, Any]  # {"action", "job", "step"} or {"person": "api" | "page" | "cli"}
BoxKey = tuple[str, int, int, int, int]  # (label, x, y, width, height)
Record = dict[str, Any]


def action_writer(action: str, job: int, step: int | None) -> Writer:
    """The writer of what step ``step`` of ``action`` wrote in job ``job`` (None: the action's
    metadata set after running)."""
    return {"action": action, "job": job, "step": step}


def person_writer(via: str) -> Writer:
    return {"person": via}


def box_key(b: BoundingBox) -> BoxKey:
    return (b.label, b.x, b.y, b.width, b.height)


def _box(k: Sequence[Any]) -> BoundingBox:
    return BoundingBox.model_construct(label=k[0], x=k[1], y=k[2], width=k[3], height=k[4], score=None)


def load(text: str | None) -> Record:
    return json.loads(text) if text else {}


def dump(record: Record) -> str | None:
    kept = {k: v for k, v in record.items() if v}
    return json.dumps(kept, separators=(",", ":")) if kept else None


def same_contributions(a: str | None, b: str | None) -> bool:
    """Whether two records say the same but for which job of an action wrote a value."""
    if a == b:
        return True

    def norm(x: Any) -> Any:
        if isinstance(x, dict):
            return {k: norm(v) for k, v in x.items() if not (k == "job" and "action" in x)}
        if isinstance(x, list):
            return [norm(v) for v in x]
        return x

    return bool(norm(load(a)) == norm(load(b)))


def _sl(labels: Sequence[StructuredLabel]) -> list[list[Any]]:
    return [[s.start_index, s.end_index, s.label] for s in labels]


def _by_action(entry: Mapping[str, Any] | None, action: str) -> bool:
    return bool(entry) and (entry or {}).get("by", {}).get("action") == action


def mentions(text: str | None, action: str) -> bool:
    """Whether a stored record may hold contributions of ``action`` (a cheap test on its text)."""
    return bool(text) and json.dumps(action) in (text or "")


# --- reading a record against the sample ----------------------------------------------------------


def box_writers(sample: Sample, record: Record) -> list[Writer | None]:
    """The writer of each of the sample's boxes, in order (None: uploaded, or written before
    writers were recorded)."""
    entries: dict[tuple[Any, ...], list[Mapping[str, Any]]] = {}
    for e in record.get("boxes", []):
        entries.setdefault(tuple(e["box"]), []).append(e)
    out: list[Writer | None] = []
    for b in sample.bounding_boxes:
        found = entries.get(box_key(b))
        out.append(found.pop(0)["by"] if found else None)
    return out


def field_writers(sample: Sample, record: Record) -> dict[str, Any]:
    """Who wrote the sample's label, disabled state, structured labels and each metadata
    value (only the valid entries: values someone changed since are theirs)."""
    out: dict[str, Any] = {}
    lab = record.get("label")
    if lab and lab.get("v") == sample.label:
        out["label"] = lab["by"]
    dis = record.get("disabled")
    if dis and dis.get("v") == sample.is_disabled:
        out["isDisabled"] = dis["by"]
    sl = record.get("structured")
    if sl and sl.get("v") == _sl(sample.structured_labels):
        out["structuredLabels"] = sl["by"]
    md = {k: e["by"] for k, e in record.get("metadata", {}).items() if e.get("v") == sample.metadata.get(k)}
    if md:
        out["metadata"] = md
    return out


def describe_writer(w: Writer | None) -> str:
    """A writer in words: `action clean (job 3, step 2)`, `a person (page)`, or `upload or a
    person` where nothing was recorded (uploads and bulk edits record no writer)."""
    if not w:
        return "upload or a person"
    if "action" in w:
        step = f", step {w['step']}" if w.get("step") else ", after running"
        return f"action {w['action']} (job {w['job']}{step})"
    return f"a person ({w.get('person', '?')})"


# --- strip: the sample without one action's contributions ------------------------------------------


@dataclass
class Stripped:
    """A sample without an action's contributions, the record of what remains, and the
    boxes others took over from the action."""

    sample: Sample
    record: Record
    taken: list[BoxKey] = field(default_factory=list)


def strip(sample: Sample, record: Record, action: str) -> Stripped:
    """``sample`` as it would be had ``action`` never written to it: its valid boxes removed
    (or, for a box it renamed, the box it replaced put back), and its label, disabled state,
    structured labels and metadata values put back to what they were before it wrote them.
    Entries no longer valid are dropped from the returned record."""
    if not record:
        return Stripped(sample, {})
    keys = [box_key(b) for b in sample.bounding_boxes]
    remaining = Counter(keys)
    boxes_out: list[BoxKey] = list(keys)
    kept_entries: list[dict[str, Any]] = []
    lost: list[dict[str, Any]] = []  # the action's boxes no longer there: edited or deleted since
    for e in record.get("boxes", []):
        k: BoxKey = tuple(e["box"])  # type: ignore[assignment]
        if remaining[k] <= 0:
            if _by_action(e, action):
                lost.append(e)
            continue
        remaining[k] -= 1
        if not _by_action(e, action):
            kept_entries.append(e)
            continue
        boxes_out.remove(k)
        if e.get("was"):
            was: BoxKey = tuple(e["was"])  # type: ignore[assignment]
            boxes_out.append(was)
            if e.get("wasBy"):
                kept_entries.append({"box": list(was), "by": e["wasBy"]})
    taken: list[BoxKey] = []
    for e in lost:  # a box now near one the action wrote is that box, edited by someone else
        place = e["box"][1:]
        taken += [k for k in boxes_out if xywh_iou(k[1:], place) >= TAKEOVER_IOU and k not in taken]
    for e in kept_entries:  # a person's edit of one of the action's boxes recorded what it replaced
        if (e.get("wasBy") or {}).get("action") == action and tuple(e["box"]) not in taken:
            taken.append(tuple(e["box"]))  # type: ignore[arg-type]
    update: dict[str, Any] = {}
    out: Record = {"boxes": kept_entries}
    if len(boxes_out) != len(keys) or boxes_out != keys:
        update["bounding_boxes"] = [_box(k) for k in boxes_out]
    lab = record.get("label")
    if lab and lab.get("v") == sample.label:
        if _by_action(lab, action):
            update["label"] = lab.get("was")
            if lab.get("wasBy"):
                out["label"] = {"by": lab["wasBy"], "v": lab.get("was")}
        else:
            out["label"] = lab
    dis = record.get("disabled")
    if dis and dis.get("v") == sample.is_disabled:
        if _by_action(dis, action):
            update["is_disabled"] = bool(dis.get("was"))
        else:
            out["disabled"] = dis
    sl = record.get("structured")
    if sl and sl.get("v") == _sl(sample.structured_labels):
        if _by_action(sl, action):
            update["structured_labels"] = [StructuredLabel.model_construct(start_index=a, end_index=b, label=c)
                                           for a, b, c in sl.get("was") or []]
        else:
            out["structured"] = sl
    md_entries: dict[str, Any] = {}
    md = dict(sample.metadata)
    md_changed = False
    for key, e in record.get("metadata", {}).items():
        if e.get("v") != sample.metadata.get(key):
            continue
        if not _by_action(e, action):
            md_entries[key] = e
            continue
        md_changed = True
        if e.get("was") is None:
            md.pop(key, None)
        else:
            md[key] = e["was"]
            if e.get("wasBy"):
                md_entries[key] = {"by": e["wasBy"], "v": e["was"]}
    if md_changed:
        update["metadata"] = md
    out["metadata"] = md_entries
    return Stripped(sample.model_copy(update=update) if update else sample, out, taken)


def drop_taken(base: Sample, final_boxes: list[BoundingBox], taken: Sequence[BoxKey]) -> list[BoundingBox]:
    """``final_boxes`` without the new boxes (not in ``base``) that sit on a box someone took
    over from the action (IoU >= TAKEOVER_IOU), while that box is still there."""
    if not taken:
        return final_boxes
    still = [k for k in taken if k in {box_key(b) for b in final_boxes}]
    if not still:
        return final_boxes
    old = Counter(box_key(b) for b in base.bounding_boxes)
    out = []
    for b in final_boxes:
        k = box_key(b)
        if old[k] > 0:
            old[k] -= 1
            out.append(b)
        elif not any(xywh_iou(k[1:], t[1:]) >= TAKEOVER_IOU for t in still):
            out.append(b)
    return out


# --- contribute: the record after a write -----------------------------------------------------------


def contribute(base: Sample, record: Record, final: Sample, writer: Writer,
               box_steps: Mapping[BoxKey, int] | None = None,
               field_steps: Mapping[str, int] | None = None) -> Record:
    """The record after ``base`` (with ``record``, its valid entries) became ``final`` by
    ``writer``'s hand. A box in both keeps its writer; a new box at the place of one that went
    (another label, or moved a little) is an edit that remembers the box it replaced and who
    wrote that; other new boxes are the writer's. ``box_steps`` / ``field_steps`` name the step of an action's chain that wrote a
    box or a field (``label``, ``isDisabled``, ``structuredLabels``, ``metadata.KEY``)."""

    def by(step_key: str | None = None, box: BoxKey | None = None) -> Writer:
        if "action" not in writer:
            return writer
        step = writer.get("step")
        if box is not None and box_steps and box in box_steps:
            step = box_steps[box]
        elif step_key is not None and field_steps and step_key in field_steps:
            step = field_steps[step_key]
        return {**writer, "step": step}

    out: Record = {k: v for k, v in record.items()}
    if final.bounding_boxes != base.bounding_boxes:
        entries: dict[BoxKey, list[dict[str, Any]]] = {}
        for entry in record.get("boxes", []):
            entries.setdefault(tuple(entry["box"]), []).append(entry)  # type: ignore[arg-type]
        old = Counter(box_key(b) for b in base.bounding_boxes)
        new_keys = [box_key(b) for b in final.bounding_boxes]
        fresh: list[BoxKey] = []
        kept: list[dict[str, Any]] = []
        for k in new_keys:
            if old[k] > 0:
                old[k] -= 1
                if entries.get(k):
                    kept.append(entries[k].pop(0))
            else:
                fresh.append(k)
        gone = list(old.elements())
        for k in fresh:
            # a new box where one went (the same place, or nearly: IoU >= TAKEOVER_IOU) is that box, edited
            same_place = next((g for g in gone if g[1:] == k[1:]), None) or \
                next((g for g in gone if xywh_iou(g[1:], k[1:]) >= TAKEOVER_IOU), None)
            e: dict[str, Any] = {"box": list(k), "by": by(box=k)}
            if same_place is not None:
                gone.remove(same_place)
                e["was"] = list(same_place)
                prior = entries.get(same_place)
                if prior:
                    e["wasBy"] = prior[0]["by"]
            kept.append(e)
        out["boxes"] = kept
    if final.label != base.label:
        out["label"] = _scalar(by("label"), final.label, base.label, record.get("label"))
    if final.is_disabled != base.is_disabled:
        out["disabled"] = _scalar(by("isDisabled"), final.is_disabled, base.is_disabled, record.get("disabled"))
    if final.structured_labels != base.structured_labels:
        out["structured"] = _scalar(by("structuredLabels"), _sl(final.structured_labels),
                                    _sl(base.structured_labels), record.get("structured"))
    if final.metadata != base.metadata:
        md = dict(record.get("metadata", {}))
        for key in set(final.metadata) | set(base.metadata):
            now, was = final.metadata.get(key), base.metadata.get(key)
            if now != was:
                md[key] = _scalar(by(f"metadata.{key}"), now, was, md.get(key))
        out["metadata"] = md
    return out


def _scalar(writer: Writer, value: Any, was: Any, prior: Mapping[str, Any] | None) -> dict[str, Any]:
    e = {"by": writer, "v": value, "was": was}
    if prior and prior.get("v") == was:
        e["wasBy"] = prior["by"]
    return e


# --- a chain's steps: which step wrote what --------------------------------------------------------


def chain_steps(base: Sample, steps: Sequence[tuple[int, Sample]]) -> tuple[dict[BoxKey, int], dict[str, int]]:
    """For a chain's successive results ``steps`` ([(step number, the sample after it)]),
    which step each final box and field value came from: the step after which it last
    appeared, counted from ``base``."""
    box_steps: dict[BoxKey, int] = {}
    fields: dict[str, int] = {}
    prev = base
    for n, s in steps:
        if s.bounding_boxes != prev.bounding_boxes:
            before = Counter(box_key(b) for b in prev.bounding_boxes)
            for k, c in Counter(box_key(b) for b in s.bounding_boxes).items():
                if c > before.get(k, 0):
                    box_steps[k] = n
        if s.label != prev.label:
            fields["label"] = n
        if s.is_disabled != prev.is_disabled:
            fields["isDisabled"] = n
        if s.structured_labels != prev.structured_labels:
            fields["structuredLabels"] = n
        for key in set(s.metadata) | set(prev.metadata):
            if s.metadata.get(key) != prev.metadata.get(key):
                fields[f"metadata.{key}"] = n
        prev = s
    return box_steps, fields
