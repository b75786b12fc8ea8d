"""What a change does to a sample, counted as a multiset: the one diff that the terminal,
``proposals show``, the review page, ``jobs show`` and the inference monitor describe.

Boxes are compared by (label, geometry): two boxes at the same place with different labels are
two boxes, and a box that appears three times counts three times. A box whose label changed
in place (one removed and one added at the same geometry) is a rename. So every count here is
exactly what writing ``after`` over ``before`` changes.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from .model import BoundingBox, Sample

Geometry = tuple[int, int, int, int]


@dataclass
class BoxDiff:
    """One box of either side: ``kind`` is kept, added, removed or renamed (``was`` then
    holds the label it had)."""

    kind: str
    box: BoundingBox
    was: str | None = None

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {"kind": self.kind, "label": self.box.label, "x": self.box.x, "y": self.box.y,
                             "width": self.box.width, "height": self.box.height}
        if self.was is not None:
            d["was"] = self.was
        return d


@dataclass
class SampleDiff:
    """The difference between a sample and the same sample after a change."""

    boxes: list[BoxDiff] = field(default_factory=list)
    label: tuple[str | None, str | None] | None = None
    disabled: tuple[bool, bool] | None = None
    metadata: list[tuple[str, str | None, str | None]] = field(default_factory=list)
    structured: tuple[int, int, list[str]] | None = None  # (ranges before, ranges after, labels after)
    boxes_changed: bool = False

    def count(self, kind: str) -> int:
        return sum(1 for b in self.boxes if b.kind == kind)

    def counts(self) -> dict[str, int]:
        """Boxes added, removed and renamed (each box counted once per occurrence)."""
        return {k: self.count(k) for k in ("added", "removed", "renamed")} if self.boxes_changed else {}

    def is_empty(self) -> bool:
        return not (self.boxes_changed or self.label or self.disabled or self.metadata or self.structured)

    def lines(self) -> list[str]:
        """Human-readable lines, every count the number of boxes written."""
        out: list[str] = []
        if self.label is not None:
            out.append(f"label: {self.label[0] or '-'} -> {self.label[1] or '-'}")
        if self.disabled is not None:
            out.append("disabled" if self.disabled[1] else "enabled")
        for kind in ("added", "removed"):
            labels = [b.box.label for b in self.boxes if b.kind == kind]
            if labels:
                out.append(f"boxes {kind}: {len(labels)} ({', '.join(tally(labels))})")
        renamed = [f"{b.was} -> {b.box.label}" for b in self.boxes if b.kind == "renamed"]
        if renamed:
            out.append(f"boxes renamed: {len(renamed)} ({', '.join(tally(renamed))})")
        if self.structured is not None:
            before, after, labels = self.structured
            out.append(f"structured labels: {after} ranges (was {before}; {', '.join(tally(labels))})")
        for key, was, now in self.metadata:
            if now is None:
                out.append(f"metadata {key}: removed")
            else:
                shown = now if len(now) <= 60 else now[:57] + "..."
                out.append(f"metadata {key}: {was if was is not None else '-'} -> {shown}")
        return out

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {}
        if self.label is not None:
            d["label"] = {"old": self.label[0], "new": self.label[1]}
        if self.disabled is not None:
            d["isDisabled"] = {"old": self.disabled[0], "new": self.disabled[1]}
        if self.boxes_changed:
            d["boundingBoxes"] = {**self.counts(), "boxes": [b.to_json() for b in self.boxes if b.kind != "kept"]}
        if self.structured is not None:
            d["structuredLabels"] = {"old": self.structured[0], "new": self.structured[1]}
        if self.metadata:
            d["metadata"] = [{"key": k, "old": o, "new": n} for k, o, n in self.metadata]
        return d


def tally(labels: Sequence[str]) -> list[str]:
    """``["3x circle", "square"]``: each distinct label with its count, most frequent first."""
    return [f"{n}x {lab}" if n > 1 else lab for lab, n in Counter(labels).most_common()]


def _key(b: BoundingBox) -> tuple[str, int, int, int, int]:
    return (b.label, b.x, b.y, b.width, b.height)


def box_changes(before: Sequence[BoundingBox], after: Sequence[BoundingBox]) -> list[BoxDiff]:
    """Every box of either side with its kind, as a multiset: exact matches are kept, then a
    removed and an added box at the same geometry pair up as a rename."""
    left = Counter(_key(b) for b in before)
    out: list[BoxDiff] = []
    added: list[BoundingBox] = []
    for b in after:
        k = _key(b)
        if left[k] > 0:
            left[k] -= 1
            out.append(BoxDiff("kept", b))
        else:
            added.append(b)
    removed: list[BoundingBox] = []
    for b in before:
        k = _key(b)
        if left[k] > 0:
            left[k] -= 1
            removed.append(b)
    by_place: dict[Geometry, list[BoundingBox]] = {}
    for b in removed:
        by_place.setdefault((b.x, b.y, b.width, b.height), []).append(b)
    for b in added:
        olds = by_place.get((b.x, b.y, b.width, b.height))
        if olds:
            out.append(BoxDiff("renamed", b, olds.pop(0).label))
        else:
            out.append(BoxDiff("added", b))
    out += [BoxDiff("removed", b) for olds in by_place.values() for b in olds]
    return out


def diff(before: Sample, after: Sample) -> SampleDiff:
    """What turning ``before`` into ``after`` changes."""
    d = SampleDiff()
    if before.bounding_boxes != after.bounding_boxes:
        d.boxes = box_changes(before.bounding_boxes, after.bounding_boxes)
        d.boxes_changed = any(b.kind != "kept" for b in d.boxes)
    else:
        d.boxes = [BoxDiff("kept", b) for b in before.bounding_boxes]
    if (before.label or None) != (after.label or None):
        d.label = (before.label, after.label)
    if before.is_disabled != after.is_disabled:
        d.disabled = (before.is_disabled, after.is_disabled)
    if before.structured_labels != after.structured_labels:
        d.structured = (len(before.structured_labels), len(after.structured_labels),
                        [s.label for s in after.structured_labels])
    for k in sorted(set(before.metadata) | set(after.metadata)):
        was, now = before.metadata.get(k), after.metadata.get(k)
        if was != now:
            d.metadata.append((k, was, now))
    return d
