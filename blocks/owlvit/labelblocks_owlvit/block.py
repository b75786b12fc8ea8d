"""The `owlvit` block: zero-shot bounding boxes with OWL-ViT or OWLv2.

Built for throughput:

- the prompt's texts are embedded once per run (in ``setup``), not per image or label;
- each image goes through the image model once, whatever the number of prompt lines: the
  class head scores every patch against all queries at once;
- images are decoded and preprocessed in a background thread while the model runs on the
  previous micro-batch, and go through the model ``batch-size`` at a time;
- inference runs under ``torch.inference_mode`` and, with precision bf16/fp16, autocast.

Post-processing (thresholds, area filters, per-label NMS, pixel boxes) is plain numpy in
:func:`detections`, so it is tested without a model.
"""

from __future__ import annotations

import math
import re
from collections import deque
from collections.abc import Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from labelblocks import (
    BlockContext,
    BlockError,
    BoundingBox,
    ModelBlock,
    SampleChange,
    SampleFailure,
    SampleInput,
    one_box_per_object,
    with_provenance,
)

DEFAULT_MIN_CONFIDENCE = 0.1
DELETE_MODES = ("no", "matching-prompt", "yes")
# micro-batches decoded ahead of the model
PREFETCH = 2
# candidates below the threshold kept in the job's record for tuning: score >= this share of
# the label's minimum confidence, at most this many per label
RECORD_FLOOR = 0.5
RECORD_TOP = 10

_LINE = re.compile(r"^(?P<text>[^()]*?)\s*(?:\((?P<inner>[^()]*)\))?$")


@dataclass(frozen=True)
class Query:
    """One prompt line: what to search for, the label to give it, and the minimum score."""

    text: str
    label: str
    min_confidence: float = DEFAULT_MIN_CONFIDENCE


def parse_prompt(prompt: str) -> list[Query]:
    """Prompt lines ``search text (label, min_confidence)`` to queries. The parentheses are
    optional; inside them a lone number with a decimal point (``cat (0.3)``) is the minimum
    confidence, anything else the label. Raises ValueError naming the line."""
    out: list[Query] = []
    for n, raw in enumerate(prompt.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        m = _LINE.match(line)
        if not m:
            raise ValueError(f"prompt line {n}: expected `search text (label, min_confidence)`, got {raw!r}")
        text = m["text"].strip()
        if not text:
            raise ValueError(f"prompt line {n}: the search text is empty in {raw!r}")
        label, conf = text, DEFAULT_MIN_CONFIDENCE
        if m["inner"] is not None:
            parts = [p.strip() for p in m["inner"].split(",")]
            if len(parts) > 2:
                raise ValueError(f"prompt line {n}: expected at most `(label, min_confidence)` in parentheses, got {raw!r}")
            if len(parts) == 1 and "." in parts[0] and _is_number(parts[0]):
                parts = ["", parts[0]]
            if parts[0]:
                label = parts[0]
            if len(parts) == 2:
                if not _is_number(parts[1]):
                    raise ValueError(f"prompt line {n}: min_confidence must be a number from 0 to 1, got {parts[1]!r}")
                conf = float(parts[1])
                if not 0 <= conf <= 1:
                    raise ValueError(f"prompt line {n}: min_confidence must be from 0 to 1, got {parts[1]}")
        out.append(Query(text, label, conf))
    if not out:
        raise ValueError("expected at least one line `search text (label, min_confidence)`, got an empty prompt")
    return out


def _is_number(s: str) -> bool:
    try:
        float(s)
    except ValueError:
        return False
    return math.isfinite(float(s))


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> list[int]:
    """Greedy non-maximum suppression on xyxy boxes; the indices kept, best score first."""
    order = np.argsort(-scores, kind="stable")
    x0, y0, x1, y1 = boxes.T
    area = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
    keep: list[int] = []
    while order.size:
        i = int(order[0])
        keep.append(i)
        rest = order[1:]
        w = np.clip(np.minimum(x1[i], x1[rest]) - np.maximum(x0[i], x0[rest]), 0, None)
        h = np.clip(np.minimum(y1[i], y1[rest]) - np.maximum(y0[i], y0[rest]), 0, None)
        inter = w * h
        union = area[i] + area[rest] - inter
        iou = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
        order = rest[iou <= iou_threshold]
    return keep


@dataclass
class Filters:
    min_area_pct: float = 0.0
    max_area_pct: float = 100.0
    nms_iou: float | None = None


def detections(scores: np.ndarray, boxes: np.ndarray, queries: Sequence[Query], width: int, height: int,
               filters: Filters) -> tuple[list[BoundingBox], list[dict[str, Any]]]:
    """Boxes for one image from the model's per-patch ``scores`` [patches, queries]
    (probabilities) and ``boxes`` [patches, 4] (xyxy in pixels of the original image).

    Per query, patches scoring above its minimum confidence become boxes of its label; boxes
    are clamped to the image, filtered by area, then suppressed per label (NMS) when asked.
    Returns the boxes (best first, score kept) and the near-miss candidates for the record.
    """
    clamped = boxes.astype(np.float64, copy=True)
    np.clip(clamped[:, 0::2], 0, width, out=clamped[:, 0::2])
    np.clip(clamped[:, 1::2], 0, height, out=clamped[:, 1::2])
    area_pct = 100.0 * (clamped[:, 2] - clamped[:, 0]) * (clamped[:, 3] - clamped[:, 1]) / float(width * height)
    size_ok = (area_pct >= filters.min_area_pct) & (area_pct <= filters.max_area_pct) & (area_pct > 0)
    by_label: dict[str, tuple[list[np.ndarray], list[np.ndarray]]] = {}
    near: list[dict[str, Any]] = []
    for q, query in enumerate(queries):
        s = scores[:, q]
        hit = np.flatnonzero((s > query.min_confidence) & size_ok)
        idx, sc = by_label.setdefault(query.label, ([], []))
        idx.append(hit)
        sc.append(s[hit])
        floor = query.min_confidence * RECORD_FLOOR
        miss = np.flatnonzero((s > floor) & (s <= query.min_confidence) & size_ok)
        for i in miss[np.argsort(-s[miss], kind="stable")][:RECORD_TOP]:
            near.append({"label": query.label, "score": round(float(s[i]), 4), **_pixel_box(clamped[i])})
    found: list[tuple[float, str, np.ndarray]] = []
    for label, (idx_parts, score_parts) in by_label.items():
        idx = np.concatenate(idx_parts)
        sc = np.concatenate(score_parts)
        if not idx.size:
            continue
        keep = nms(clamped[idx], sc, filters.nms_iou) if filters.nms_iou is not None else range(idx.size)
        found.extend((float(sc[k]), label, clamped[idx[k]]) for k in keep)
    found.sort(key=lambda t: -t[0])
    out: list[BoundingBox] = []
    for score, label, box in found:
        px = _pixel_box(box)
        if px["width"] > 0 and px["height"] > 0:
            out.append(BoundingBox(label=label, score=round(score, 4), **px))
    return out, near


def _pixel_box(b: np.ndarray) -> dict[str, int]:
    x0, y0 = math.floor(b[0]), math.floor(b[1])
    x1, y1 = math.ceil(b[2]), math.ceil(b[3])
    return {"x": x0, "y": y0, "width": x1 - x0, "height": y1 - y0}


def kept_boxes(existing: Sequence[BoundingBox], mode: str, labels: set[str]) -> list[BoundingBox]:
    """The sample's boxes that stay under ``delete_existing_bounding_boxes``."""
    if mode == "yes":
        return []
    if mode == "matching-prompt":
        return [b for b in existing if b.label not in labels]
    return list(existing)


class Preprocessor:
    """PIL image -> the model's pixel tensor [3, H, W].

    For OWL-ViT's processor (resize to a fixed size, rescale, normalize) this does the same
    operations as the Hugging Face image processor — one PIL resize, then torch arithmetic —
    several times faster; anything else goes through the model's own image processor.
    """

    def __init__(self, image_processor: Any) -> None:
        self.processor = image_processor
        ip = image_processor
        size = getattr(ip, "size", None) or {}
        self.fast = (
            type(ip).__name__.startswith("OwlViTImageProcessor")
            and bool(getattr(ip, "do_resize", False))
            and not getattr(ip, "do_center_crop", False)
            and bool(getattr(ip, "do_rescale", False))
            and bool(getattr(ip, "do_normalize", False))
            and "height" in size and "width" in size
        )
        if self.fast:
            self.size = (int(size["width"]), int(size["height"]))
            self.resample = int(ip.resample)
            # (x * rescale - mean) / std as one multiply-add per value
            std = np.asarray(ip.image_std, dtype=np.float32)
            self.mul = (float(ip.rescale_factor) / std).astype(np.float32)
            self.add = (-np.asarray(ip.image_mean, dtype=np.float32) / std).astype(np.float32)

    def __call__(self, image: Any) -> Any:
        import torch

        if not self.fast:
            return self.processor(images=image, return_tensors="pt")["pixel_values"][0]
        # numpy, not torch: this runs in the decoding thread, and torch ops there would start a
        # second team of compute threads competing with the model's
        chw = np.asarray(image.resize(self.size, resample=self.resample)).transpose(2, 0, 1)
        out = np.empty(chw.shape, dtype=np.float32)
        for c in range(3):  # per channel plane: contiguous, 6x faster than broadcasting over HWC
            np.multiply(chw[c], self.mul[c], out=out[c], dtype=np.float32)
            out[c] += self.add[c]
        return torch.from_numpy(out)


class OwlVit(ModelBlock):
    name = "owlvit"
    # its change carries the boxes it keeps and the metadata with its provenance: it reads them
    reads = frozenset({"content", "boxes", "metadata"})
    parameters = Path(__file__).with_name("parameters.json")
    version = "1"
    default_batch_size = 4
    runner_batch_factor = 8  # micro-batches of `batch-size` images per runner batch

    @classmethod
    def threshold_parameters(cls, parameters: Mapping[str, str], key: str, value: float) -> dict[str, str] | None:
        """The prompt with the minimum confidence of label ``key``'s lines set to ``value``."""
        try:
            queries = parse_prompt(str(parameters.get("prompt") or ""))
        except ValueError:
            return None
        if not any(q.label == key for q in queries):
            return None
        lines = [f"{q.text} ({q.label}, {value:g})" if q.label == key else
                 f"{q.text} ({q.label}, {q.min_confidence:g})" for q in queries]
        return {"prompt": "\n".join(lines)}

    @classmethod
    def threshold_value(cls, parameters: Mapping[str, str], key: str) -> float | None:
        """The minimum confidence of label ``key``'s prompt lines (the lowest, when several)."""
        try:
            found = [q.min_confidence for q in parse_prompt(str(parameters.get("prompt") or "")) if q.label == key]
        except ValueError:
            return None
        return min(found) if found else None

    @classmethod
    def check_args(cls, args: Mapping[str, Any]) -> None:
        # typed options (Block.options): parameters.json holds every default
        try:
            parse_prompt(args["prompt"])
        except ValueError as e:
            raise ValueError(f"prompt: {e}") from None
        lo, hi = args["ignore-objects-smaller-than"], args["ignore-objects-larger-than"]
        for param, v in (("ignore-objects-smaller-than", lo), ("ignore-objects-larger-than", hi)):
            if not 0 <= v <= 100:
                raise ValueError(f"{param}: expected 0 to 100 (% of the image), got {v}")
        if lo > hi:
            raise ValueError(f"ignore-objects-smaller-than ({lo}) is larger than ignore-objects-larger-than ({hi}): "
                             f"every box would be dropped")
        iou = args.get("nms-iou-threshold")  # hidden (absent) unless nms is on
        if iou is not None and not 0 <= iou <= 1:
            raise ValueError(f"nms-iou-threshold: expected 0 to 1, got {iou}")
        super().check_args(args)

    def setup(self, args: Mapping[str, Any], context: BlockContext) -> None:
        from labelblocks import load_pretrained, require_model

        require_model(args["model"])  # before the heavy imports
        import torch
        from transformers import AutoModelForZeroShotObjectDetection, AutoProcessor

        self.queries = parse_prompt(args["prompt"])
        self.labels = {q.label for q in self.queries}
        self.model_id = args["model"]
        self.filters = Filters(
            min_area_pct=args["ignore-objects-smaller-than"],
            max_area_pct=args["ignore-objects-larger-than"],
            nms_iou=args["nms-iou-threshold"] if args["nms"] else None,
        )
        # several prompt lines firing on one object give one box, the best line's (off: one per line)
        self.one_box = args["one-box-per-object"]
        self.delete_mode = args["delete_existing_bounding_boxes"]
        if self.delete_mode not in DELETE_MODES:
            raise BlockError(f"delete_existing_bounding_boxes: expected one of {', '.join(DELETE_MODES)}, "
                             f"got {self.delete_mode!r}")
        super().setup(args, context)
        processor = load_pretrained(AutoProcessor.from_pretrained, self.model_id, "model")
        model = load_pretrained(AutoModelForZeroShotObjectDetection.from_pretrained, self.model_id, "model")
        if not hasattr(model, "image_embedder") or not hasattr(model, "class_predictor"):
            raise BlockError(f"model {self.model_id!r} is a {type(model).__name__}, not an OWL-ViT or OWLv2 detector")
        self.model = model.to(self.device).eval()
        self.padded_square = model.config.model_type == "owlv2"  # OWLv2 pads images to a square
        self.preprocess = Preprocessor(processor.image_processor)
        # the text queries, embedded once for the whole run
        tokenizer = processor.tokenizer
        max_len = int(model.config.text_config.max_position_embeddings)
        texts = [q.text for q in self.queries]
        tokens = tokenizer(texts, padding=True, return_tensors="pt")
        if tokens["input_ids"].shape[1] > max_len:
            long = [t for t in texts if len(tokenizer(t)["input_ids"]) > max_len]
            raise BlockError(f"prompt: {long[0]!r} is longer than the model's {max_len} tokens; shorten it")
        base = getattr(model, model.base_model_prefix)
        with torch.inference_mode():
            out = base.get_text_features(input_ids=tokens["input_ids"].to(self.device),
                                         attention_mask=tokens["attention_mask"].to(self.device))
            q = out.pooler_output if hasattr(out, "pooler_output") else out
        self.query_embeds = q.to(torch.float32)[None]  # [1, queries, dim]

    def cache_key(self, args: Mapping[str, Any]) -> str:
        return f"owlvit-1:{args.get('model')}:{args.get('precision')}"

    # -- the model --------------------------------------------------------------------------

    def forward(self, pixel_values: Any) -> tuple[np.ndarray, np.ndarray]:
        """Per-patch probabilities [B, patches, queries] and normalised cxcywh boxes
        [B, patches, 4] for a batch of preprocessed images: one image forward per image."""
        import torch

        model = self.model
        with torch.inference_mode(), self.autocast():
            pv = pixel_values.to(self.device, non_blocking=True)
            feature_map = model.image_embedder(pixel_values=pv)[0]
            b, h, w, d = feature_map.shape
            feats = feature_map.reshape(b, h * w, d)
            logits = model.class_predictor(feats, self.query_embeds.expand(b, -1, -1))[0]
            boxes = model.box_predictor(feats, feature_map)
            probs = torch.sigmoid(logits.float())
        return probs.cpu().numpy(), boxes.float().cpu().numpy()

    def pixel_boxes(self, boxes: np.ndarray, width: int, height: int) -> np.ndarray:
        """Normalised cxcywh -> xyxy in pixels of the original image."""
        cx, cy, bw, bh = boxes.T.astype(np.float64)
        sx, sy = (max(width, height),) * 2 if self.padded_square else (width, height)
        return np.stack([(cx - bw / 2) * sx, (cy - bh / 2) * sy, (cx + bw / 2) * sx, (cy + bh / 2) * sy], axis=1)

    # -- the block ---------------------------------------------------------------------------

    def _prepare(self, chunk: Sequence[SampleInput]) -> list[tuple[Any, tuple[int, int]] | SampleFailure]:
        out: list[tuple[Any, tuple[int, int]] | SampleFailure] = []
        for inp in chunk:
            try:
                img = inp.image()
                out.append((self.preprocess(img), img.size))
            except Exception as e:
                out.append(SampleFailure(f"cannot read the image: {type(e).__name__}: {e}"))
        return out

    def label(
        self, batch: Sequence[SampleInput], args: Mapping[str, Any], context: BlockContext
    ) -> Sequence[SampleChange | SampleFailure]:
        import torch

        items = list(batch)
        samples = [inp.sample for inp in items]  # read in this thread; the decoder reads only files
        chunks = [items[i : i + self.micro_batch] for i in range(0, len(items), self.micro_batch)]
        pending: deque[Future[list[tuple[Any, tuple[int, int]] | SampleFailure]]] = deque(
            self.pool.submit(self._prepare, c) for c in chunks[:PREFETCH])
        queued = len(pending)
        results: list[SampleChange | SampleFailure] = []
        prompt = args["prompt"]
        while pending:
            prepared = pending.popleft().result()
            if queued < len(chunks):
                pending.append(self.pool.submit(self._prepare, chunks[queued]))
                queued += 1
            ok = [p for p in prepared if not isinstance(p, SampleFailure)]
            if ok:
                probs, boxes = self.forward(torch.stack([p[0] for p in ok]))
            k = 0
            for p in prepared:
                if isinstance(p, SampleFailure):
                    results.append(p)
                    continue
                s = samples[len(results)]
                width, height = p[1]
                found, near = detections(probs[k], self.pixel_boxes(boxes[k], width, height), self.queries,
                                         width, height, self.filters)
                k += 1
                if self.one_box:
                    found, same = one_box_per_object(found)
                    near = same + near
                context.records[s.id] = {"boxes": len(found), "near_misses": near}
                context.count("images")
                results.append(SampleChange(
                    bounding_boxes=kept_boxes(s.bounding_boxes, self.delete_mode, self.labels) + found,
                    metadata=with_provenance(s, labeled_by=self.model_id, prompt=prompt),
                ))
        return results
