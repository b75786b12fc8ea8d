"""The canonical, validated types that flow through labelblocks.

Field names on the wire (``--json`` output, the HTTP API, files) are the protocol's
camelCase names (``boundingBoxes``, ``structuredLabels``, ``isDisabled``); Python code uses
snake_case attributes. Validation happens on construction, with "expected X, got Y" messages.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic.alias_generators import to_camel

from .errors import InvalidInput
from .text import CATEGORIES as CATEGORIES
from .text import MAX_INT as MAX_INT
from .text import check_text as check_text
from .text import parse_json as parse_json
from .text import text_value as _text

Category = Literal["training", "validation", "testing"]
ChartType = Literal["image", "video", "chart", "table"]


# the fields of a proposed change, in the protocol's order
CHANGE_FIELDS = ("label", "is_disabled", "bounding_boxes", "metadata", "structured_labels")


class _Model(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=False
    )

    def to_json(self) -> dict[str, Any]:
        """The protocol's camelCase JSON form."""
        return self.model_dump(by_alias=True, mode="json", exclude_none=True)


class MediaFields(_Model):
    """What a sample's media is: the chart type, an image's size, an audio clip's rate and
    length, defined here once. Probed on upload (:class:`labelblocks.media.MediaInfo`),
    carried by a new sample (:class:`labelblocks.store.NewSample`), stored per sample and
    read back into :class:`Sample`; :data:`MEDIA_FIELDS` lists their names."""

    chart_type: ChartType = "image"
    width: int | None = None
    height: int | None = None
    frequency: float | None = None
    values_count: int | None = None
    interval_ms: float | None = None
    total_length_ms: float | None = None

    def media(self) -> dict[str, Any]:
        """The media fields by name."""
        return {f: getattr(self, f) for f in MEDIA_FIELDS}


MEDIA_FIELDS = tuple(MediaFields.model_fields)


class BoundingBox(_Model):
    """An axis-aligned box in integer pixels of the (EXIF-oriented) image."""

    label: str
    x: int = Field(ge=0, le=MAX_INT)
    y: int = Field(ge=0, le=MAX_INT)
    width: int = Field(gt=0, le=MAX_INT)
    height: int = Field(gt=0, le=MAX_INT)
    score: float | None = None  # kept in job records only; never part of a stored sample

    @field_validator("label")
    @classmethod
    def _label_not_empty(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("expected a non-empty label")
        return _text(v)

    def inside(self, width: int, height: int) -> bool:
        return self.x + self.width <= width and self.y + self.height <= height


def xywh_iou(a: Sequence[int], b: Sequence[int]) -> float:
    """Intersection over union of two (x, y, width, height) boxes (0 when they do not overlap)."""
    ix = max(0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = a[2] * a[3] + b[2] * b[3] - inter
    return inter / union if union > 0 else 0.0


def box_iou(a: BoundingBox, b: BoundingBox) -> float:
    """Intersection over union of two boxes (0 when they do not overlap)."""
    return xywh_iou((a.x, a.y, a.width, a.height), (b.x, b.y, b.width, b.height))


class StructuredLabel(_Model):
    """A label over value indices ``startIndex..endIndex`` (both inclusive)."""

    start_index: int = Field(ge=0, le=MAX_INT)
    end_index: int = Field(ge=0, le=MAX_INT)
    label: str

    @field_validator("label")
    @classmethod
    def _label_text(cls, v: str) -> str:
        return _text(v)

    @model_validator(mode="after")
    def _ordered(self) -> StructuredLabel:
        if self.end_index < self.start_index:
            raise ValueError(
                f"expected endIndex >= startIndex, got startIndex={self.start_index} "
                f"endIndex={self.end_index}"
            )
        return self


def _check_metadata(v: Any) -> dict[str, str]:
    if not isinstance(v, dict):
        raise ValueError(f"expected an object of strings, got {type(v).__name__}")
    for k, val in v.items():
        if not isinstance(k, str) or not k:
            raise ValueError(f"expected non-empty string keys, got {k!r}")
        if not isinstance(val, str):
            raise ValueError(
                f"expected a string value for metadata key {k!r}, got {type(val).__name__} {val!r}"
            )
        try:
            _text(k)
            _text(val)
        except ValueError as e:
            raise ValueError(f"metadata key {k!r}: {e}") from None
    return dict(v)


class SampleChange(_Model):
    """A proposed change to one sample: the one shape that flows between chained steps.

    ``None`` means "keep what is there". ``boundingBoxes``, ``structuredLabels`` and
    ``metadata`` replace the existing values whole.
    """

    label: str | None = None
    is_disabled: bool | None = None
    bounding_boxes: list[BoundingBox] | None = None
    metadata: dict[str, str] | None = None
    structured_labels: list[StructuredLabel] | None = None

    @field_validator("metadata", mode="before")
    @classmethod
    def _metadata(cls, v: Any) -> Any:
        return None if v is None else _check_metadata(v)

    @field_validator("label")
    @classmethod
    def _label_text(cls, v: str | None) -> str | None:
        return None if v is None else _text(v)

    def is_empty(self) -> bool:
        return all(getattr(self, f) is None for f in CHANGE_FIELDS)


def compose(changes: Sequence[SampleChange]) -> SampleChange:
    """The net change of chained steps: each later step's fields replace earlier ones (step k
    saw steps 1..k-1 applied, so its whole-field values already include theirs)."""
    out = SampleChange()
    for ch in changes:
        for f in CHANGE_FIELDS:
            v = getattr(ch, f)
            if v is not None:
                setattr(out, f, v)
    return out


class _SampleHead(_Model):
    """What a sample is before its media fields: its id, name, category and labels."""

    id: int
    filename: str
    category: Category = "training"
    label: str | None = None
    bounding_boxes: list[BoundingBox] = Field(default_factory=list)
    structured_labels: list[StructuredLabel] = Field(default_factory=list)
    metadata: dict[str, str] = Field(default_factory=dict)
    is_disabled: bool = False

    @field_validator("metadata", mode="before")
    @classmethod
    def _metadata(cls, v: Any) -> Any:
        return _check_metadata(v)


class _SampleTail(_Model):
    """What a sample is after its media fields: its content and times."""

    content_hash: str = ""
    media_type: str = ""
    created: datetime | None = None
    updated: datetime | None = None


class Sample(_SampleTail, MediaFields, _SampleHead):
    """A sample as the protocol describes it. Pydantic orders fields from the last base to
    the first, so its JSON reads head, media fields, tail, as it always has."""

    @property
    def is_audio(self) -> bool:
        return self.frequency is not None

    def to_json(self) -> dict[str, Any]:
        d = super().to_json()
        if self.width is not None and self.height is not None:
            d["imageDimensions"] = {"width": self.width, "height": self.height}
        return d

    def with_change(self, change: SampleChange) -> Sample:
        """This sample as it would be after ``change`` (used to overlay chained steps)."""
        update: dict[str, Any] = {}
        if change.label is not None:
            update["label"] = change.label
        if change.is_disabled is not None:
            update["is_disabled"] = change.is_disabled
        if change.bounding_boxes is not None:
            update["bounding_boxes"] = [b.model_copy() for b in change.bounding_boxes]
        if change.metadata is not None:
            update["metadata"] = dict(change.metadata)
        if change.structured_labels is not None:
            update["structured_labels"] = list(change.structured_labels)
        return self.model_copy(update=update)


def format_validation_error(err: ValidationError, what: str) -> str:
    parts = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "(root)"
        parts.append(f"{loc}: {e['msg']}")
    return f"invalid {what}: " + "; ".join(parts)


def parse_change(data: Any, what: str = "proposed change") -> SampleChange:
    try:
        return SampleChange.model_validate(data)
    except ValidationError as e:
        raise InvalidInput(format_validation_error(e, what)) from None


def parse_boxes(data: Any, what: str = "bounding boxes") -> list[BoundingBox]:
    if not isinstance(data, list):
        raise InvalidInput(f"invalid {what}: expected a list, got {type(data).__name__}")
    out = []
    for i, item in enumerate(data):
        try:
            out.append(BoundingBox.model_validate(item))
        except ValidationError as e:
            raise InvalidInput(format_validation_error(e, f"{what}[{i}]")) from None
    return out


def parse_structured_labels(data: Any, what: str = "structured labels") -> list[StructuredLabel]:
    if not isinstance(data, list):
        raise InvalidInput(f"invalid {what}: expected a list, got {type(data).__name__}")
    out = []
    for i, item in enumerate(data):
        try:
            out.append(StructuredLabel.model_validate(item))
        except ValidationError as e:
            raise InvalidInput(format_validation_error(e, f"{what}[{i}]")) from None
    return out


def normalise_structured_labels(
    labels: list[StructuredLabel], values_count: int | None
) -> list[StructuredLabel]:
    """Sort ranges and resolve overlaps the way the reference server tolerates them.

    Published blocks write ranges that overlap by one index; a later range starts after the
    earlier one ends. Ranges past the end of the sample are an error.
    """
    out: list[StructuredLabel] = []
    for sl in sorted(labels, key=lambda s: (s.start_index, s.end_index)):
        if values_count is not None and sl.end_index >= values_count:
            raise InvalidInput(
                f"structured label {sl.label!r} ends at index {sl.end_index}, "
                f"expected at most {values_count - 1} (the sample has {values_count} values)"
            )
        start = sl.start_index
        if out and start <= out[-1].end_index:
            start = out[-1].end_index + 1
        if start > sl.end_index:
            continue  # wholly covered by the previous range
        out.append(StructuredLabel(start_index=start, end_index=sl.end_index, label=sl.label))
    return out
