"""Blocks that ship with labelblocks itself, registered through the same hook as any plugin."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from .blocks import Block, BlockContext, SampleFailure, SampleInput, merged_metadata
from .errors import BlockError
from .hookspecs import hookimpl
from .model import SampleChange

NEAR_DUPLICATES_PARAMETERS: dict[str, Any] = {
    "version": 1,
    "type": "ai-action",
    "info": {
        "name": "Near-duplicate images",
        "description": (
            "Groups near-identical images by perceptual hash (pHash) and writes metadata "
            "duplicate_group to every image that has a near-duplicate; optionally disables all but "
            "the first (lowest id) of each group. Use duplicate_group as a keep-together key when "
            "splitting a dataset without useful metadata: run this block, then "
            "`labelblocks split --keep-together duplicate_group`."
        ),
        "operatesOn": ["images_object_detection", "images_single_label"],
    },
    "parameters": [
        {"name": "Maximum Hamming distance", "type": "int", "param": "hamming-threshold", "value": 6,
         "help": "Images whose 64-bit perceptual hashes differ in at most this many bits are near-duplicates (0-20)."},
        {"name": "Disable duplicates", "type": "flag", "param": "disable-duplicates", "value": False,
         "help": "Disable every image of a group except the one with the lowest id."},
    ],
}


def group_hashes(hashes: Sequence[int], threshold: int) -> list[int]:
    """Union-find grouping of 64-bit hashes within ``threshold`` bits of each other.

    Pigeonhole: split the 64 bits into threshold+1 chunks; two hashes within the threshold
    agree exactly on at least one chunk, so only hashes sharing a chunk value are compared.
    Returns, for each input, the index of its group's first member.
    """
    n = len(hashes)
    parent = list(range(n))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    parts = threshold + 1
    bounds = [round(64 * k / parts) for k in range(parts + 1)]
    for k in range(parts):
        lo, hi = bounds[k], bounds[k + 1]
        mask = ((1 << (hi - lo)) - 1) << lo
        buckets: dict[int, list[int]] = {}
        for i, h in enumerate(hashes):
            buckets.setdefault(h & mask, []).append(i)
        for members in buckets.values():
            for a_pos, a in enumerate(members):
                for b in members[a_pos + 1 :]:
                    if find(a) != find(b) and (hashes[a] ^ hashes[b]).bit_count() <= threshold:
                        ra, rb = find(a), find(b)
                        parent[max(ra, rb)] = min(ra, rb)
    return [find(i) for i in range(n)]


class NearDuplicates(Block):
    name = "near-duplicates"
    parameters = NEAR_DUPLICATES_PARAMETERS
    version = "1"
    needs_all_samples = True

    @classmethod
    def check_args(cls, args: Mapping[str, Any]) -> None:
        threshold = args["hamming-threshold"]  # typed options: parameters.json holds the default
        if not 0 <= threshold <= 20:
            raise ValueError(f"hamming-threshold: expected 0 to 20, got {threshold}")

    def label(
        self, batch: Sequence[SampleInput], args: Mapping[str, Any], context: BlockContext
    ) -> Sequence[SampleChange | SampleFailure]:
        import imagehash

        threshold = args["hamming-threshold"]
        results: list[SampleChange | SampleFailure | None] = [None] * len(batch)
        ok: list[int] = []
        hashes: list[int] = []
        for i, inp in enumerate(batch):
            try:
                hashes.append(int(str(imagehash.phash(inp.image())), 16))
                ok.append(i)
            except Exception as e:
                results[i] = SampleFailure(f"cannot hash image: {e}")
        roots = group_hashes(hashes, threshold)
        size: dict[int, int] = {}
        for r in roots:
            size[r] = size.get(r, 0) + 1
        for pos, i in enumerate(ok):
            s = batch[i].sample
            root = roots[pos]
            if size[root] < 2:
                results[i] = SampleChange()
                continue
            first = batch[ok[root]].sample
            group = f"{first.content_hash[:12]}"
            change = SampleChange(metadata=merged_metadata(s, duplicate_group=group))
            if args["disable-duplicates"] and s.id != first.id:
                change.is_disabled = True
            results[i] = change
        return [r if r is not None else SampleChange() for r in results]


RELABEL_PARAMETERS: dict[str, Any] = {
    "version": 1,
    "type": "ai-action",
    "info": {
        "name": "Rename or remove labels",
        "description": (
            "Renames labels, structured (audio) labels and bounding-box labels by a mapping, removes boxes by label or by "
            "size. Typical second step after a zero-shot detector: map its search texts to your "
            "class names and drop boxes too small to be useful."
        ),
        "operatesOn": ["images_object_detection", "images_single_label", "audio"],
    },
    "parameters": [
        {"name": "Mapping", "type": "string", "param": "mapping", "value": "", "multiline": True, "optional": True,
         "placeholder": "person -> pedestrian\nbicycle -> cyclist\ntraffic cone ->",
         "help": "One rename per line, `old -> new`. `old ->` with nothing after the arrow removes boxes "
                 "labelled old (a sample's own label and audio segments are never removed)."},
        {"name": "Apply to", "type": "select", "param": "apply-to", "value": "both",
         "valid": ["both", "boxes", "label"],
         "help": "Rename box labels, the sample's label (and its structured labels), or both."},
        {"name": "Remove boxes smaller than (% of the image)", "type": "float", "param": "min-box-area",
         "value": 0, "help": "Boxes covering less than this percentage of the image are removed (0 keeps all)."},
    ],
}


def parse_mapping(text: str) -> dict[str, str]:
    """``old -> new`` lines to {old: new}; an empty ``new`` means remove."""
    out: dict[str, str] = {}
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if "->" not in line:
            raise ValueError(f"mapping line {n}: expected `old -> new`, got {raw!r}")
        old, new = (x.strip() for x in line.split("->", 1))
        if not old:
            raise ValueError(f"mapping line {n}: the label to rename is empty in {raw!r}")
        out[old] = new
    return out


class Relabel(Block):
    name = "relabel"
    parameters = RELABEL_PARAMETERS
    version = "1"
    default_batch_size = 500

    @classmethod
    def check_args(cls, args: Mapping[str, Any]) -> None:
        try:
            parse_mapping(args["mapping"])
        except ValueError as e:
            raise ValueError(f"mapping: {e}") from None
        min_area = args["min-box-area"]
        if not 0 <= min_area <= 100:
            raise ValueError(f"min-box-area: expected 0 to 100 (% of the image), got {min_area}")

    reads = frozenset({"label", "structured_labels", "boxes", "dimensions"})

    def label(
        self, batch: Sequence[SampleInput], args: Mapping[str, Any], context: BlockContext
    ) -> Sequence[SampleChange | SampleFailure]:
        mapping = parse_mapping(args["mapping"])
        target = args["apply-to"]
        min_area = args["min-box-area"]
        out: list[SampleChange | SampleFailure] = []
        for inp in batch:
            s = inp.sample
            change = SampleChange()
            if target in ("both", "label") and s.label and mapping.get(s.label):
                change.label = mapping[s.label]
            if target in ("both", "label") and any(mapping.get(x.label) for x in s.structured_labels):
                # segments are renamed, never removed: structured labels tile the sample
                change.structured_labels = [x.model_copy(update={"label": mapping.get(x.label) or x.label})
                                            for x in s.structured_labels]
            if target in ("both", "boxes") and s.bounding_boxes:
                area = (s.width or 0) * (s.height or 0)
                boxes = []
                for b in s.bounding_boxes:
                    new = mapping.get(b.label, b.label) if target != "label" else b.label
                    if not new or (min_area and area and 100 * b.width * b.height / area < min_area):
                        continue
                    boxes.append(b.model_copy(update={"label": new}))
                if boxes != s.bounding_boxes:
                    change.bounding_boxes = boxes
            out.append(change)
        return out


ANOMALY_PARAMETERS: dict[str, Any] = {
    "version": 1,
    "type": "ai-action",
    "info": {
        "name": "Anomaly score (trained on the project)",
        "description": (
            "Scores each sample with an anomaly learn block trained on the project (`labelblocks learn anomaly`): "
            "writes metadata anomaly_score (below 0: inside a cluster of the training data) and anomaly=true or "
            "false by the minimum score; optionally labels or disables the anomalies. The score of each sample "
            "stays in the job's record, so `proposals show --sort-by anomaly_score` lists the outliers first."
        ),
        "operatesOn": ["images_object_detection", "images_single_label", "audio"],
    },
    "parameters": [
        {"name": "Learn block", "type": "int", "param": "learn-id", "value": 1,
         "help": "The id of the anomaly learn block (`labelblocks learn list`)."},
        {"name": "Minimum anomaly score", "type": "float", "param": "min-anomaly-score",
         "optional": True, "help": "Samples scoring at or above it are anomalies (default: the learn block's "
                                   "suggested threshold)."},
        {"name": "Label", "type": "string", "param": "label", "value": "", "optional": True,
         "help": "Give anomalies this label (empty: leave labels as they are)."},
        {"name": "Disable anomalies", "type": "flag", "param": "disable", "value": False,
         "help": "Disable the samples found anomalous."},
    ],
}


class Anomaly(Block):
    name = "anomaly"
    uses_project = True
    parameters = ANOMALY_PARAMETERS
    version = "1"
    default_batch_size = 1000
    reads = frozenset({"content", "metadata", "label"})

    def label(
        self, batch: Sequence[SampleInput], args: Mapping[str, Any], context: BlockContext
    ) -> Sequence[SampleChange | SampleFailure]:
        if context.learned is None:
            raise BlockError("the anomaly block runs in the project's own process (it reads the learned model)")
        model = context.learned(int(args["learn-id"]))
        given = args.get("min-anomaly-score")
        threshold = float(given) if given not in (None, "") else model.threshold
        label, disable = args["label"], args["disable"]
        kind = model.modality
        usable = [inp for inp in batch if inp.sample.is_audio == (kind == "audio")]
        scores, failed = model.score([(inp.sample.id, inp.sample.content_hash) for inp in usable])
        out: list[SampleChange | SampleFailure] = []
        for inp in batch:
            s = inp.sample
            if s.is_audio != (kind == "audio"):
                out.append(SampleFailure(f"learn block {args['learn-id']} scores {kind} samples; this one is "
                                         f"{'audio' if s.is_audio else 'an image'}"))
                continue
            if s.id not in scores:
                out.append(SampleFailure(failed.get(s.id, "no features")))
                continue
            windows = scores[s.id]
            score = float(windows[0]) if len(windows) == 1 else float(windows.max())
            flagged = score >= threshold
            record: dict[str, Any] = {"anomaly_score": round(score, 6)}
            if len(windows) > 1:
                record["window_scores"] = np.round(windows, 6).tolist()
            context.records[s.id] = record
            out.append(SampleChange(
                metadata={**s.metadata, "anomaly_score": f"{score:.4f}", "anomaly": "true" if flagged else "false"},
                label=label if flagged and label else None, is_disabled=True if flagged and disable else None))
        return out


@hookimpl
def register_blocks(register: Callable[[type[Block]], Any]) -> None:
    register(NearDuplicates)
    register(Relabel)
    register(Anomaly)
