"""Closing the loop: logged inferences whose images were kept become samples, their custom
metadata the samples' metadata and their predictions a preview job's proposals to review."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

from .model import SampleChange
from .store import NewSample, Store
from .store import inferences as log_store
from .store import jobs as job_store

_EXT = {"image/jpeg": ".jpg", "image/png": ".png", "image/webp": ".webp", "image/bmp": ".bmp", "image/gif": ".gif",
        "image/tiff": ".tiff"}


def add_to_dataset(store: Store, where: Mapping[str, str] | None = None, model: str | None = None,
                   since: float | None = None, max_confidence: float | None = None, limit: int | None = None,
                   category: str = "training") -> dict[str, Any]:
    """Add the matching kept inferences as samples (once: an inference already added is
    passed over) and stage their predictions as proposals, one preview job per model."""
    rows = [r for r in log_store.list_inferences(store, where, model, since)
            if r.image_kept and r.error is None and store.blobs.exists(r.content_hash)
            and (max_confidence is None or (max(r.confidences) if r.confidences else 0.0) <= max_confidence)]
    added_before = set(store.metadata_values("inference_id").values())
    reused = sum(1 for r in rows if r.id in added_before)
    rows = [r for r in rows if r.id not in added_before][:limit]
    if not rows:
        return {"samples": 0, "reused": reused, "jobs": []}
    new = [NewSample(filename=f"inference-{r.id[:8]}{_EXT.get(r.media_type, '.img')}", category=category,
                     content_hash=r.content_hash, media_type=r.media_type, ext=_EXT.get(r.media_type, ".img"),
                     chart_type="image", width=r.width, height=r.height,
                     metadata={**r.metadata, "inference_id": r.id, "inference_model": r.model})
           for r in rows]
    ids = store.add_samples(new)
    jobs = []
    by_model: dict[str, list[tuple[int, log_store.Logged]]] = {}
    for sid, r in zip(ids, rows, strict=True):
        by_model.setdefault(r.model, []).append((sid, r))
    for name, items in by_model.items():
        action, _, version = name.partition("/")
        _, definition = log_store.get_version(store, action, int(version) if version.isdigit() else None)
        digest = hashlib.sha256(json.dumps(definition, sort_keys=True).encode()).hexdigest()
        job = job_store.create_job(store, action, "preview", {**definition, "model": name, "from": "inferences"},
                                   digest, [sid for sid, _ in items])
        for sid, r in items:
            job_store.stage_proposal(store, job, sid, 1, SampleChange.model_validate(r.change))
        job_store.set_job_status(store, job, "completed")
        jobs.append(job)
    return {"samples": len(ids), "reused": reused, "jobs": jobs, "sampleIds": ids}
