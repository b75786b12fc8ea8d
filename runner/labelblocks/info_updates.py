"""What a described upload (an info file, COCO, YOLO) says about samples already in the project:
how many differ from the file, and those differences staged as one job to preview, review and
apply like an action's (``labelblocks upload --info-file F --update-existing``).

The file's label, boxes and structured labels replace the sample's where the file gives them;
its metadata keys are set (keys the file does not name stay). Nothing is written until the job
is applied, and a sample changed after the job was staged is left out then.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .model import Sample, SampleChange
from .store import Store
from .store import jobs as job_store
from .uploads import INFER, Outcome, UploadItem

UPDATE_ACTION = "update-from-file"  # the action name the staged jobs carry


@dataclass
class ExistingDiff:
    """The existing samples an upload described differently: (sample id, the change the file
    asks for) for each, and how many existing samples the upload matched."""

    changes: list[tuple[int, SampleChange]]
    matched: int

    def to_json(self) -> dict[str, Any]:
        return {"existing": self.matched, "differing": len(self.changes),
                "sampleIds": [sid for sid, _ in self.changes]}


def wanted_change(item: UploadItem, sample: Sample) -> SampleChange:
    """What the file says the sample should hold, where it differs from what it holds."""
    update: dict[str, Any] = {}
    if item.label is not INFER and item.label != sample.label and not item.structured_labels:
        update["label"] = item.label
    if item.bounding_boxes is not None and [b.model_copy(update={"score": None}) for b in item.bounding_boxes] \
            != sample.bounding_boxes:
        update["bounding_boxes"] = item.bounding_boxes
    if item.structured_labels is not None and item.structured_labels != sample.structured_labels:
        update["structured_labels"] = item.structured_labels
    if any(sample.metadata.get(k) != v for k, v in item.metadata.items()):
        update["metadata"] = {**sample.metadata, **item.metadata}
    if item.is_disabled and not sample.is_disabled:
        update["is_disabled"] = True
    return SampleChange(**update)


def existing_differences(store: Store, items: Iterable[UploadItem], outcomes: Sequence[Outcome]) -> ExistingDiff:
    """Compare each item the upload skipped as already in the project with that sample."""
    by_source = {it.source: it for it in items}
    pairs = [(o.id, by_source[o.source]) for o in outcomes
             if o.status == "duplicate" and o.id is not None and o.source in by_source]
    samples = {s.id: s for s in store.get_samples([sid for sid, _ in pairs], missing_ok=True)}
    changes = []
    for sid, it in pairs:
        s = samples.get(sid)
        if s is None:
            continue
        ch = wanted_change(it, s)
        if not ch.is_empty():
            changes.append((sid, ch))
    return ExistingDiff(sorted(changes, key=lambda c: c[0]), len(pairs))


def stage_updates(store: Store, changes: Sequence[tuple[int, SampleChange]], source: str) -> int:
    """Stage ``changes`` as one preview job (step 1 of the action UPDATE_ACTION), computed from
    the samples' current revisions; returns the job's id."""
    # like a person's edit, a file's update never takes back an earlier one's: nothing is stripped
    definition: dict[str, Any] = {"name": UPDATE_ACTION, "source": source, "replacesEarlier": False,
                                  "steps": [{"step": 1, "block": "info-file", "version": "", "parameters": {"file": source}}]}
    digest = hashlib.sha256(json.dumps(definition, sort_keys=True).encode()).hexdigest()
    ids = [sid for sid, _ in changes]
    job_id = job_store.create_job(store, UPDATE_ACTION, "preview", definition, digest, ids)
    revisions: Mapping[int, float] = store.revisions(ids)
    for sid, ch in changes:
        job_store.stage_proposal(store, job_id, sid, 1, ch, revision=revisions.get(sid))
    job_store.set_job_status(store, job_id, "completed")
    return job_id
