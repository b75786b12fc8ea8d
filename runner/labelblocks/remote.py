"""Running an installed Python block as a protocol block, against a remote project.

``labelblocks blocks run NAME --data-ids-file ids.json [--propose-actions JOB] [--param ...]``
reads ``EI_API_ENDPOINT`` and ``EI_PROJECT_API_KEY`` and works through the protocol's HTTP
API: samples are read over HTTP (with the job's earlier steps applied during a preview), the
block's :meth:`~labelblocks.blocks.Block.label` runs exactly as in-process, and each result
is posted as a proposed change (with ``--propose-actions``) or written to the sample. So the
runner image can serve as any bundled block's container.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

from .blocks import Block, BlockContext, SampleFailure, SampleInput
from .errors import InvalidInput, LabelblocksError, MissingSecret
from .executors.inprocess import label_batch
from .model import CATEGORIES, BoundingBox, Sample, SampleChange, StructuredLabel
from .secrets import redact


class RemoteError(LabelblocksError):
    pass


class RemoteProject:
    """A client of the protocol's API for one project."""

    def __init__(self, endpoint: str, api_key: str, project_id: int | None = None, timeout: float = 120) -> None:
        if not endpoint:
            raise InvalidInput("no API endpoint: set EI_API_ENDPOINT (e.g. http://127.0.0.1:4800/v1)")
        if not api_key:
            raise InvalidInput("no API key: set EI_PROJECT_API_KEY")
        self.base = endpoint.rstrip("/")
        self.http = requests.Session()
        self.http.headers["x-api-key"] = api_key
        self.timeout = timeout
        self.api_key = api_key
        self.project_id = project_id if project_id is not None else self._first_project()

    def _request(self, method: str, path: str, **kw: Any) -> requests.Response:
        url = f"{self.base}{path}"
        try:
            r = self.http.request(method, url, timeout=self.timeout, **kw)
        except requests.RequestException as e:
            raise RemoteError(redact(f"cannot reach {url}: {e}", [self.api_key])) from None
        if r.status_code >= 400:
            try:
                msg = r.json().get("error") or r.text
            except ValueError:
                msg = r.text[:500]
            raise RemoteError(redact(f"{method} {path}: HTTP {r.status_code}: {msg}", [self.api_key]))
        return r

    def _json(self, method: str, path: str, **kw: Any) -> dict[str, Any]:
        r = self._request(method, path, **kw)
        try:
            data = r.json()
        except ValueError:
            raise RemoteError(f"{method} {path}: expected JSON, got {r.text[:200]!r}") from None
        if not isinstance(data, dict) or data.get("success") is False:
            raise RemoteError(f"{method} {path}: {data.get('error') if isinstance(data, dict) else data!r}")
        return data

    def _first_project(self) -> int:
        projects = self._json("GET", "/api/projects").get("projects") or []
        if not projects:
            raise RemoteError("the API key sees no project")
        return int(projects[0]["id"])

    def _p(self, path: str) -> str:
        return f"/api/{self.project_id}{path}"

    def sample(self, sample_id: int, job_id: int | None = None) -> Sample:
        params = {"limitPayloadValues": 0}  # the sample's fields only: media come from /image or /wav
        if job_id is not None:
            params["proposedActionsJobId"] = job_id
        return sample_from_json(self._json("GET", self._p(f"/raw-data/{sample_id}"), params=params)["sample"])

    def media(self, s: Sample) -> bytes:
        kind = "wav" if s.is_audio else "image"
        return self._request("GET", self._p(f"/raw-data/{s.id}/{kind}"), params={"axisIx": 0} if s.is_audio else None).content

    def propose(self, sample_id: int, job_id: int, change: SampleChange) -> None:
        self._json("POST", self._p(f"/raw-data/{sample_id}/propose-changes"),
                   json={"jobId": job_id, "proposedChanges": change.to_json()})

    def write(self, sample_id: int, change: SampleChange) -> None:
        """Write a change with the protocol's per-field endpoints (metadata keys are added or
        updated: the protocol cannot remove a key)."""
        if change.bounding_boxes is not None:
            self._json("POST", self._p(f"/raw-data/{sample_id}/bounding-boxes"),
                       json={"boundingBoxes": [b.model_copy(update={"score": None}).to_json() for b in change.bounding_boxes]})
        if change.structured_labels is not None:
            self._json("POST", self._p(f"/raw-data/{sample_id}/structured-labels"),
                       json={"structuredLabels": [x.to_json() for x in change.structured_labels]})
        if change.label is not None:
            self._json("POST", self._p(f"/raw-data/{sample_id}/edit-label"), json={"label": change.label})
        if change.metadata is not None:
            self._json("POST", self._p(f"/raw-data/{sample_id}/metadata"), json={"metadata": change.metadata})
        if change.is_disabled is not None:
            self._json("POST", self._p(f"/raw-data/{sample_id}/{'disable' if change.is_disabled else 'enable'}"))


def sample_from_json(d: dict[str, Any]) -> Sample:
    """A protocol sample (as the API answers it) as labelblocks' Sample."""
    dims = d.get("imageDimensions") or {}
    audio = d.get("chartType") != "image" and not dims and float(d.get("frequency") or 0) > 0
    cat = d.get("category")
    return Sample(
        id=int(d["id"]), filename=str(d.get("filename", "")), category=cat if cat in CATEGORIES else "training",
        label=d.get("label") or None,
        bounding_boxes=[BoundingBox.model_validate(b) for b in d.get("boundingBoxes") or []],
        structured_labels=[StructuredLabel.model_validate({k: s[k] for k in ("startIndex", "endIndex", "label")})
                           for s in d.get("structuredLabels") or []],
        metadata={str(k): str(v) for k, v in (d.get("metadata") or {}).items()},
        is_disabled=bool(d.get("isDisabled")), chart_type=d.get("chartType") or "image",
        width=dims.get("width"), height=dims.get("height"),
        frequency=float(d["frequency"]) if audio else None, values_count=d.get("valuesCount") if audio else None,
        interval_ms=d.get("intervalMs") if audio else None, total_length_ms=d.get("totalLengthMs") if audio else None,
        content_hash=d.get("sha256Hash") or "",
    )


@dataclass
class RemoteResult:
    done: int = 0
    failed: dict[int, str] = field(default_factory=dict)


def run_remote(cls: type[Block], values: dict[str, Any], ids: Sequence[int], project: RemoteProject,
               propose_job: int | None, cache_dir: Path | None = None,
               on_progress: Callable[[int], None] | None = None) -> RemoteResult:
    """Run ``cls`` on ``ids`` of a remote project: the same block code as in-process."""
    spec = cls.spec()
    secrets = {n: os.environ[n] for n in spec.secret_names if os.environ.get(n)}
    missing = [n for n in spec.secret_names if n not in secrets]
    if missing:
        raise MissingSecret(f"block {cls.name} needs the environment variable{'s' if len(missing) > 1 else ''} "
                            f"{', '.join(missing)}")
    context = BlockContext(secrets=secrets, job_id=propose_job, preview=propose_job is not None, cache_dir=cache_dir)
    block = cls()
    cls.check_args(values)
    block.setup(values, context)
    result = RemoteResult()
    hidden = [*secrets.values(), project.api_key]
    try:
        bs = len(ids) if cls.needs_all_samples else max(1, block.batch_size(values))
        for start in range(0, len(ids), bs):
            batch = list(ids[start : start + bs])
            inputs = []
            for sid in batch:
                s = project.sample(sid, propose_job)
                inputs.append(SampleInput(s, lambda s=s: project.media(s)))  # type: ignore[misc]
            outs = label_batch(block, inputs, values, context)
            for sid, out in zip(batch, outs, strict=True):
                context.records.pop(sid, None)
                if isinstance(out, SampleFailure):
                    result.failed[sid] = redact(out.error, hidden)
                    continue
                try:
                    if propose_job is not None:
                        project.propose(sid, propose_job, out)
                    else:
                        project.write(sid, out)
                except LabelblocksError as e:
                    result.failed[sid] = str(e)
            result.done += len(batch)
            if on_progress:
                on_progress(result.done)
    finally:
        block.teardown()
    return result
