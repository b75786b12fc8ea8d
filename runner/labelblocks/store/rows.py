"""The samples table's rows: new samples, changes prepared for writing, and rows read back
as samples; the helpers every statement on the table shares."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pydantic import Field
from sqlalchemy import (
    ColumnElement,
    false,
    literal,
)
from sqlalchemy.engine import Row

from ..constants import IDS_AS_PARAMETERS
from ..errors import InvalidInput
from ..model import (
    MEDIA_FIELDS,
    BoundingBox,
    MediaFields,
    Sample,
    StructuredLabel,
    normalise_structured_labels,
)
from .dialect import json_ids


class NewSample(MediaFields):
    """A sample about to be inserted (its blob already written)."""

    filename: str
    category: str
    content_hash: str
    media_type: str
    ext: str
    label: str | None = None
    bounding_boxes: list[BoundingBox] = Field(default_factory=list)
    structured_labels: list[StructuredLabel] = Field(default_factory=list)
    metadata: dict[str, str] = Field(default_factory=dict)
    is_disabled: bool = False
    source_stamp: tuple[str, str] | None = None  # a synced file's (source URL, stamp): see store.sources


def _dump_boxes(boxes: Sequence[BoundingBox]) -> str:
    return json.dumps([b.model_dump(by_alias=True, exclude_none=True, exclude={"score"}) for b in boxes])


def _dump_structured(labels: Sequence[StructuredLabel]) -> str:
    return json.dumps([s.model_dump(by_alias=True) for s in labels])


_PG_TYPES = {"is_disabled": "BOOLEAN"}  # a column a JSON text is cast to in PostgreSQL (TEXT otherwise)


_HAS_NUL = "\\u0000"  # how json.dumps writes a NUL character (or, harmlessly, a backslash before "u0000")


@dataclass
class PreparedChanges:
    """Changes to many samples, validated and ready to write (:meth:`Store.prepare_changes`):
    per combination of changed columns, the rows ``[id, value, ...]`` as JSON, and how many."""

    updates: list[tuple[tuple[str, ...], str, int]]
    metadata_ids: str | None  # JSON list of the samples whose metadata is replaced
    metadata_rows: str | None  # JSON list of [sample id, key, value]
    count: int  # changes prepared


def _id_in(column: Any, ids: Sequence[int]) -> ColumnElement[bool]:
    """``column IN ids``, for any number of ids (SQLite binds at most 32,766 parameters)."""
    if not ids:
        return false()
    if len(ids) <= IDS_AS_PARAMETERS:
        return column.in_(ids)  # type: ignore[no-any-return]
    return column.op("IN", is_comparison=True)(json_ids(literal(json.dumps(list(ids)))))  # type: ignore[no-any-return]


def _check_boxes_fit(boxes: Sequence[BoundingBox], width: int | None, height: int | None, what: str) -> None:
    if width is None or height is None:
        if boxes:
            raise InvalidInput(f"{what} is not an image: it cannot have bounding boxes")
        return
    for b in boxes:
        if not b.inside(width, height):
            raise InvalidInput(
                f"{what}: box {b.label!r} at x={b.x} y={b.y} width={b.width} height={b.height} "
                f"does not fit in the {width}x{height} image"
            )


def _normalise_for(row: Row[Any], labels: Sequence[StructuredLabel]) -> list[StructuredLabel]:
    if row.values_count is None and labels:
        raise InvalidInput(f"sample {row.id} is an image: structured labels belong to audio and time series")
    return normalise_structured_labels(list(labels), row.values_count)


def _ts(v: float) -> datetime:
    return datetime.fromtimestamp(v, tz=UTC)


def _row_to_sample(r: Row[Any], md: dict[str, str]) -> Sample:
    return Sample.model_construct(
        id=r.id,
        filename=r.filename,
        category=r.category,
        label=r.label,
        bounding_boxes=[BoundingBox.model_construct(**_snake_box(b)) for b in json.loads(r.bounding_boxes)],
        structured_labels=[
            StructuredLabel.model_construct(start_index=s["startIndex"], end_index=s["endIndex"], label=s["label"])
            for s in json.loads(r.structured_labels)
        ],
        metadata=md,
        is_disabled=bool(r.is_disabled),
        **{f: getattr(r, f) for f in MEDIA_FIELDS},
        content_hash=r.content_hash,
        media_type=r.media_type,
        created=_ts(r.created_at),
        updated=_ts(r.updated_at),
    )


def _snake_box(b: dict[str, Any]) -> dict[str, Any]:
    return {"label": b["label"], "x": b["x"], "y": b["y"], "width": b["width"], "height": b["height"], "score": None}


def _chunks(seq: Sequence[Any], n: int) -> Iterator[Sequence[Any]]:
    for i in range(0, len(seq), n):
        yield seq[i : i + n]

