"""What a card draws: boxes in the image's pixel space (an SVG over the thumbnail with the
same viewBox, so a box at the image's edge is drawn at its edge), audio segments over the
waveform, and a proposal's differences (boxes added, removed, renamed; label; metadata)."""

from __future__ import annotations

from typing import Any

from ...diff import diff
from ...model import BoundingBox, Sample, StructuredLabel

PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
           "#17becf"]


def colour(label: str) -> str:
    return PALETTE[sum(label.encode()) % len(PALETTE)]


def _box(b: BoundingBox, kind: str, title: str | None = None) -> dict[str, Any]:
    score = f" {b.score:.2f}" if b.score is not None else ""
    return {"x": b.x, "y": b.y, "w": b.width, "h": b.height, "kind": kind, "label": b.label,
            "title": title or f"{b.label}{score}", "colour": colour(b.label)}


def image_card(s: Sample) -> dict[str, Any]:
    return {"id": s.id, "filename": s.filename, "audio": False, "hash": s.content_hash, "label": s.label or "",
            "width": s.width or 1, "height": s.height or 1, "boxes": [_box(b, "box") for b in s.bounding_boxes],
            "disabled": s.is_disabled, "metadata": s.metadata}


def _segments(labels: list[StructuredLabel], total: int) -> list[dict[str, Any]]:
    return [{"x": x.start_index, "w": x.end_index - x.start_index + 1, "label": x.label, "colour": colour(x.label),
             "title": f"{x.label}: values {x.start_index}-{x.end_index}"} for x in labels]


def audio_card(s: Sample) -> dict[str, Any]:
    total = s.values_count or max((x.end_index + 1 for x in s.structured_labels), default=1)
    return {"id": s.id, "filename": s.filename, "audio": True, "hash": s.content_hash, "label": s.label or "",
            "values": total, "seconds": (s.total_length_ms or 0) / 1000, "segments": _segments(s.structured_labels, total),
            "disabled": s.is_disabled, "metadata": s.metadata}


def box_diff(before: Sample, after: Sample) -> dict[str, Any]:
    """The proposal drawn: every box of either side with its kind (kept, added, removed,
    renamed: same place, another label), counted as a multiset (:mod:`labelblocks.diff`: two
    boxes at one place with different labels are two boxes), the label's and metadata's
    changes, disabled or not, and the proposed segments of audio."""
    d = diff(before, after)
    boxes = []
    for bd in d.boxes:
        if bd.kind == "renamed":
            boxes.append(_box(bd.box, "renamed", f"{bd.was} → {bd.box.label}"))
        elif bd.kind == "removed":
            boxes.append(_box(bd.box, "removed", f"{bd.box.label} (removed)"))
        else:
            boxes.append(_box(bd.box, bd.kind if d.boxes_changed else "box"))
    md_changes = []
    for k in sorted(set(before.metadata) | set(after.metadata)):
        was, now = before.metadata.get(k), after.metadata.get(k)
        if was != now:
            md_changes.append({"key": k, "old": was, "new": now})
    out: dict[str, Any] = {
        "boxes": boxes,
        "counts": d.counts(),
        "label_change": (before.label or "", after.label or "") if (before.label or "") != (after.label or "") else None,
        "md_changes": md_changes,
        "disabled_change": (before.is_disabled, after.is_disabled) if before.is_disabled != after.is_disabled else None,
    }
    if before.is_audio:
        total = before.values_count or 1
        out["proposed_segments"] = (_segments(after.structured_labels, total)
                                    if after.structured_labels != before.structured_labels else None)
    return out
