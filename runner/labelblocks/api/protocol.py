"""The protocol's JSON shapes for projects and samples, as its API bindings expect them.

The bindings (``edgeimpulse-api``) validate every answer against their models, so a sample
carries every field those models require, with neutral values where labelblocks has no
such concept (signatures, processing, cropping).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from ..model import Sample

DEVICE_TYPE = "labelblocks"


@dataclass
class ProjectInfo:
    id: int
    name: str
    owner: str
    created: datetime

    def to_json(self) -> dict[str, Any]:
        created = _iso(self.created)
        return {
            "id": self.id, "name": self.name, "description": f"labelblocks project {self.name}",
            "created": created, "owner": self.owner, "lastAccessed": created,
            "ownerIsDeveloperProfile": False, "collaborators": [], "labelingMethod": "object_detection",
            "metadata": {}, "isEnterpriseProject": False, "whitelabelId": None, "tier": "free",
            "hasPublicVersion": False, "isPublic": False, "allowsLivePublicAccess": False,
            "indPauseProcessingSamples": False, "publicProjectListed": False,
        }


def _iso(d: datetime | None) -> str:
    return (d or datetime.fromtimestamp(0, tz=UTC)).isoformat()


def _sensors(s: Sample) -> list[dict[str, Any]]:
    if s.is_audio:
        return [{"index": 0, "name": "audio", "units": "wav"}]
    return [{"index": 0, "name": "image", "units": "rgba"}]


def sample_json(s: Sample, project_id: int) -> dict[str, Any]:
    """A sample in the protocol's shape (camelCase, every field the bindings require)."""
    freq = float(s.frequency or 0.0)
    interval = float(s.interval_ms or 0.0)
    values = int(s.values_count or 1)
    total = float(s.total_length_ms or 0.0)
    sensors = _sensors(s)
    dims = {"width": s.width, "height": s.height} if s.width is not None and s.height is not None else None
    datastream: dict[str, Any] = {"index": 0, "chartType": s.chart_type, "intervalMs": interval, "frequencyHz": freq,
                                  "sensors": sensors, "valuesCount": values, "totalLengthMs": total}
    out: dict[str, Any] = {
        "id": s.id, "filename": s.filename, "signatureValidate": False, "created": _iso(s.created),
        "lastModified": _iso(s.updated), "added": _iso(s.created), "category": s.category,
        "coldstorageFilename": s.content_hash, "label": s.label or "", "intervalMs": interval,
        "frequency": freq, "originalIntervalMs": interval, "originalFrequency": freq, "deviceType": DEVICE_TYPE,
        "sensors": sensors, "valuesCount": values, "totalLengthMs": total,
        "boundingBoxes": [b.to_json() for b in s.bounding_boxes], "boundingBoxesType": "object_detection",
        "chartType": s.chart_type, "isDisabled": s.is_disabled, "isProcessing": False, "processingError": False,
        "isCropped": False, "metadata": dict(s.metadata), "projectId": project_id, "sha256Hash": s.content_hash,
        "structuredLabels": [x.to_json() for x in s.structured_labels],
        "structuredLabelsList": sorted({x.label for x in s.structured_labels}),
        "datastreams": [datastream],
    }
    if dims:
        out["imageDimensions"] = dims
        datastream["imageDimensions"] = dims
    return out


def payload_json(s: Sample, values: list[list[float]]) -> dict[str, Any]:
    return {"device_type": DEVICE_TYPE, "sensors": _sensors(s), "values": values,
            "intervalMs": float(s.interval_ms or 0.0), "frequencyHz": float(s.frequency or 0.0)}
