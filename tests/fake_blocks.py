"""A fake block plugin for the runner's tests: deterministic, no models, and it records what it
was called with (in-process in CALLS; across processes in the file named by FAKE_BLOCKS_LOG)."""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

from labelblocks.blocks import Block, BlockContext, SampleFailure, SampleInput, merged_metadata
from labelblocks.hookspecs import hookimpl
from labelblocks.model import BoundingBox, SampleChange

CALLS: list[dict[str, Any]] = []
# fake-boxer's setup with a label named here waits for the event (a slow model load), and marks
# that it started in SETUP_STARTED
SETUP_GATES: dict[str, threading.Event] = {}
SETUP_STARTED: dict[str, threading.Event] = {}
SETUPS: dict[str, int] = {}  # fake-boxer setups, by label


def _record(block: str, batch: Sequence[SampleInput], args: Mapping[str, Any], context: BlockContext) -> None:
    entry = {"block": block, "ids": [s.sample.id for s in batch], "args": dict(args), "preview": context.preview,
             "boxes": {s.sample.id: [b.label for b in s.sample.bounding_boxes] for s in batch},
             "labels": {s.sample.id: s.sample.label for s in batch}, "pid": os.getpid()}
    CALLS.append(entry)
    log = os.environ.get("FAKE_BLOCKS_LOG")
    if log:
        with open(log, "a") as f:
            f.write(json.dumps(entry) + "\n")


def _spec(name: str, params: list[dict[str, Any]], secrets: list[str] | None = None) -> dict[str, Any]:
    info: dict[str, Any] = {"name": name, "description": f"{name} (test block)", "operatesOn": ["images_object_detection"]}
    if secrets:
        info["requiredEnvVariables"] = secrets
    return {"version": 1, "type": "ai-action", "info": info, "parameters": params}


class FakeLabeler(Block):
    """Sets the label to ``prefix`` + the file name's stem; a secret token is required."""

    name = "fake-labeler"
    parameters = _spec("Fake labeler", [
        {"name": "Prefix", "type": "string", "param": "prefix", "value": "L-"},
        {"name": "Delay", "type": "float", "param": "delay", "value": 0, "help": "seconds per batch"},
        {"name": "Batch size", "type": "int", "param": "batch-size", "value": 4},
        {"name": "Token", "type": "secret", "param": "FAKE_TOKEN"},
    ])

    def label(self, batch, args, context):
        _record(self.name, batch, args, context)
        if args.get("delay"):
            time.sleep(float(args["delay"]))
        assert context.secrets.get("FAKE_TOKEN"), "the secret must reach the block"
        context.count("requests", len(batch))
        return [SampleChange(label=f"{args['prefix']}{s.sample.filename.rsplit('.', 1)[0]}") for s in batch]


class FakeBoxer(Block):
    """Adds one box covering the top-left quarter, labelled ``label``."""

    name = "fake-boxer"
    parameters = _spec("Fake boxer", [{"name": "Label", "type": "string", "param": "label", "value": "thing"}])

    def setup(self, args, context):
        SETUPS[args["label"]] = SETUPS.get(args["label"], 0) + 1
        if args["label"] in SETUP_GATES:
            SETUP_STARTED.setdefault(args["label"], threading.Event()).set()
            SETUP_GATES[args["label"]].wait(30)

    def label(self, batch, args, context):
        _record(self.name, batch, args, context)
        out = []
        for s in batch:
            w, h = s.sample.width or 2, s.sample.height or 2
            box = BoundingBox(label=args["label"], x=0, y=0, width=max(1, w // 2), height=max(1, h // 2), score=0.75)
            out.append(SampleChange(bounding_boxes=[*s.sample.bounding_boxes, box],
                                    metadata=merged_metadata(s.sample, labeled_by="fake-boxer")))
        return out


class FakeRenamer(Block):
    """Renames boxes labelled ``from`` to ``to`` (sees earlier steps' boxes)."""

    name = "fake-renamer"
    parameters = _spec("Fake renamer", [
        {"name": "From", "type": "string", "param": "from", "value": "thing"},
        {"name": "To", "type": "string", "param": "to", "value": "renamed"},
    ])

    def label(self, batch, args, context):
        _record(self.name, batch, args, context)
        return [SampleChange(bounding_boxes=[b.model_copy(update={"label": args["to"]}) if b.label == args["from"] else b
                                             for b in s.sample.bounding_boxes]) for s in batch]


class FakeFail(Block):
    """Fails the samples whose ids are listed; raises for the whole batch when any is present."""

    name = "fake-fail"
    parameters = _spec("Fake failure", [
        {"name": "Fail ids", "type": "string", "param": "fail-ids", "value": "", "allowEmpty": True},
        {"name": "Raise", "type": "flag", "param": "raise", "value": False},
    ])

    def label(self, batch, args, context):
        _record(self.name, batch, args, context)
        bad = {int(x) for x in str(args.get("fail-ids", "")).split(",") if x.strip()}
        if args.get("raise") and any(s.sample.id in bad for s in batch):
            raise RuntimeError(f"boom on {sorted(s.sample.id for s in batch if s.sample.id in bad)}")
        return [SampleFailure(f"refused sample {s.sample.id}") if s.sample.id in bad else SampleChange(is_disabled=False)
                for s in batch]


class FakeLeaky(Block):
    """A badly behaved block that tries to put its secret into its output and its error."""

    name = "fake-leaky"
    parameters = _spec("Fake leaky", [], secrets=["LEAKY_KEY"])

    def label(self, batch, args, context):
        key = context.secrets["LEAKY_KEY"]
        out: list[SampleChange | SampleFailure] = []
        for s in batch:
            if s.sample.id % 2:
                out.append(SampleFailure(f"upstream said: invalid key {key}"))
            else:
                out.append(SampleChange(metadata=merged_metadata(s.sample, note=f"used {key}")))
        return out


class FakeConstant(Block):
    """Proposes the same label for every sample without looking at any (counts its calls)."""

    name = "fake-constant"
    parameters = _spec("Fake constant", [{"name": "Label", "type": "string", "param": "label", "value": "same"}])
    reads_samples = False
    calls = 0

    def label(self, batch, args, context):
        FakeConstant.calls += len(batch)
        return [SampleChange(label=args["label"]) for _ in batch]


class FakeMeddler(Block):
    """Labels each sample ``meddled``, and meanwhile, as another process would, changes the
    samples of its batch in the database (metadata ``touched``) for its first ``rounds`` calls
    (counted in the file ``counter``): what it proposes is stale by the time the run applies."""

    name = "fake-meddler"
    parameters = _spec("Fake meddler", [
        {"name": "Database", "type": "string", "param": "db", "value": ""},
        {"name": "Counter", "type": "string", "param": "counter", "value": ""},
        {"name": "Rounds", "type": "int", "param": "rounds", "value": 1},
    ])

    def label(self, batch, args, context):
        import sqlite3

        _record(self.name, batch, args, context)
        counter = args["counter"]
        done = int(Path(counter).read_text()) if os.path.exists(counter) else 0
        if done < int(args["rounds"]):
            with open(counter, "w") as f:
                f.write(str(done + 1))
            db = sqlite3.connect(args["db"], timeout=30)
            with db:
                for s in batch:
                    db.execute("INSERT OR REPLACE INTO sample_metadata (sample_id, key, value) VALUES (?, 'touched', ?)",
                               (s.sample.id, str(done + 1)))
                    db.execute("UPDATE samples SET updated_at = updated_at + 1 WHERE id = ?", (s.sample.id,))
            db.close()
        return [SampleChange(label="meddled") for s in batch]


class FakeDetector(Block):
    """Scripted detections: ``plan`` maps a file name's stem to boxes with scores; those above
    ``min-confidence`` are proposed (after the sample's own boxes), those from half of it up
    are recorded as near misses, as owlvit records them."""

    name = "fake-detector"
    parameters = _spec("Fake detector", [
        {"name": "Plan", "type": "string", "param": "plan", "value": "{}"},
        {"name": "Minimum confidence", "type": "float", "param": "min-confidence", "value": 0.5},
    ])

    def label(self, batch, args, context):
        plan, floor = json.loads(args["plan"]), float(args["min-confidence"])
        out = []
        for s in batch:
            boxes = plan.get(s.sample.filename.split(".")[0], [])
            found = [BoundingBox(**b) for b in boxes if b["score"] > floor]
            context.records[s.sample.id] = {"boxes": len(found),
                                            "near_misses": [b for b in boxes if floor / 2 < b["score"] <= floor]}
            out.append(SampleChange(bounding_boxes=[*s.sample.bounding_boxes, *found]))
        return out


class FakeTagger(Block):
    """Scripted audio windows of one second: ``plan`` maps a file name's stem to the best
    (label, score) of each window; a window is that label when its score reaches
    ``min-confidence``, else ``other``. Records the windows as audioset does."""

    name = "fake-tagger"
    parameters: ClassVar[dict[str, Any]] = {**_spec("Fake tagger", [
        {"name": "Plan", "type": "string", "param": "plan", "value": "{}"},
        {"name": "Minimum confidence", "type": "float", "param": "min-confidence", "value": 0.5},
    ]), "info": {"name": "Fake tagger", "description": "test", "operatesOn": ["audio"]}}

    def label(self, batch, args, context):
        from labelblocks.model import StructuredLabel

        plan, floor = json.loads(args["plan"]), float(args["min-confidence"])
        out = []
        for s in batch:
            hz = int(s.sample.frequency)
            windows, labels = [], []
            for k, (label, score) in enumerate(plan.get(s.sample.filename.split(".")[0], [])):
                given = label if score >= floor else "other"
                start, end = k * hz, min((k + 1) * hz, s.sample.values_count) - 1
                labels.append(StructuredLabel(start_index=start, end_index=end, label=given))
                windows.append({"startIndex": start, "endIndex": end, "label": given,
                                "best": {"label": label, "score": score}})
            context.records[s.sample.id] = {"windows": windows, "otherLabel": "other",
                                            "threshold": {"param": "min-confidence", "value": floor}}
            out.append(SampleChange(structured_labels=labels))
        return out


class FakeNoter(Block):
    """Labels every sample ``label`` and writes its provenance as a model block does
    (``labeled_by``, ``prompt``), overwriting what an earlier step wrote there."""

    name = "fake-noter"
    parameters = _spec("Fake noter", [
        {"name": "Label", "type": "string", "param": "label", "value": "noted"},
        {"name": "Model", "type": "string", "param": "model", "value": "noter-v1"},
        {"name": "Prompt", "type": "string", "param": "prompt", "value": "what is it?"},
    ])

    def label(self, batch, args, context):
        return [SampleChange(label=args["label"], metadata={**s.sample.metadata, "labeled_by": args["model"],
                                                            "prompt": args["prompt"]}) for s in batch]


BLOCKS = [FakeLabeler, FakeBoxer, FakeRenamer, FakeFail, FakeLeaky, FakeConstant, FakeMeddler, FakeDetector,
          FakeTagger, FakeNoter]


@hookimpl
def register_blocks(register: Callable[[Any], Any]) -> None:
    for b in BLOCKS:
        register(b)
