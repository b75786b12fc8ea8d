"""The ``pretrained`` block: labels images with a model the user already has.

Sources, by parameter:

- ``model``: a Hugging Face image-classification or object-detection model (an id or a local
  folder; ``AutoModelForImageClassification`` / ``AutoModelForObjectDetection``), run here
  with the model blocks' machinery (batches of ``batch-size``, the next batch decoded while
  the model runs, bf16 where fast, ``device``);
- ``model`` naming an ``.onnx`` file: an ONNX classifier or detector run with onnxruntime,
  described by a sidecar ``.json`` beside it (:mod:`.onnx_source`);
- ``source-url`` + ``source-model``: a model served over HTTP in the Roboflow inference API
  (another labelblocks project's published action under `labelblocks serve`, or any such
  server), with the key from the secret ``SOURCE_API_KEY``.

Classification proposes the best label scoring at least ``min-confidence`` (nothing under
it); detection proposes boxes in whole pixels, clamped to the image (EXIF orientation applied
before the model sees it). ``keep-bounding-boxes`` keeps, and may rename, some classes; its
names are checked against the model's classes before any image is read.
"""

from __future__ import annotations

import base64
import difflib
import hashlib
import math
import re
from collections import deque
from collections.abc import Mapping, Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import TYPE_CHECKING, Any

from labelblocks import (
    BlockContext,
    BlockError,
    BoundingBox,
    ModelBlock,
    SampleChange,
    SampleFailure,
    SampleInput,
    load_pretrained,
    one_box_per_object,
    require_model,
    with_provenance,
)

if TYPE_CHECKING:
    from .onnx_source import OnnxModel

_KEEP = re.compile(r"^(?P<name>[^()]+?)\s*(?:\((?P<rename>[^()]*)\))?$")


def parse_keep(text: str) -> dict[str, str]:
    """``bottle (beer)`` lines or comma-separated entries: {model class: label to give it}."""
    out: dict[str, str] = {}
    for raw in re.split(r"[\n,]", text or ""):
        entry = raw.strip()
        if not entry:
            continue
        m = _KEEP.match(entry)
        if not m:
            raise ValueError(f"keep-bounding-boxes: expected `class` or `class (new name)`, got {entry!r}")
        out[m["name"].strip()] = (m["rename"] or "").strip() or m["name"].strip()
    return out


def check_keep(keep: Mapping[str, str], classes: Sequence[str], where: str) -> None:
    """Every name of ``keep`` is one of ``classes``; a typo gets the closest names."""
    known = set(classes)
    for name in keep:
        if name not in known:
            close = difflib.get_close_matches(name, classes, n=3)
            hint = f" (did you mean {', '.join(repr(c) for c in close)}?)" if close else ""
            raise BlockError(f"keep-bounding-boxes: {where} has no class {name!r}{hint}")


def pixel_box(label: str, score: float, x0: float, y0: float, x1: float, y1: float, width: int,
              height: int) -> BoundingBox | None:
    """A box in whole pixels, clamped to the image; None when nothing is left."""
    x0, y0 = max(0, math.floor(x0)), max(0, math.floor(y0))
    x1, y1 = min(width, math.ceil(x1)), min(height, math.ceil(y1))
    if x1 <= x0 or y1 <= y0:
        return None
    return BoundingBox(label=label, x=x0, y=y0, width=x1 - x0, height=y1 - y0, score=round(float(score), 4))


class Pretrained(ModelBlock):
    name = "pretrained"
    parameters = Path(__file__).with_name("parameters.json")
    version = "1"
    default_batch_size = 8
    reads = frozenset({"content", "boxes", "metadata", "label"})

    @classmethod
    def check_args(cls, args: Mapping[str, Any]) -> None:
        super().check_args(args)
        model, url = str(args.get("model") or ""), str(args.get("source-url") or "")
        if bool(model) == bool(url):
            raise ValueError("model: give either a model (a Hugging Face id or folder) or source-url and "
                             "source-model (a served model), not both")
        if url and not args.get("source-model"):
            raise ValueError("source-model: the served model's id (such as boxes/3) is needed with source-url")
        if not 0 <= args["min-confidence"] <= 1:
            raise ValueError(f"min-confidence: expected 0 to 1, got {args['min-confidence']}")
        parse_keep(str(args.get("keep-bounding-boxes") or ""))

    def cache_key(self, args: Mapping[str, Any]) -> str:
        """An ONNX model's results depend on its file and its sidecar, which may change under
        the same path: both are part of the key (the file by size and time, the sidecar by content)."""
        model = str(args.get("model") or "")
        if not model.lower().endswith(".onnx"):
            return ""
        path = Path(model).expanduser()
        try:
            st = path.stat()
            side = hashlib.sha256(path.with_suffix(".json").read_bytes()).hexdigest()[:16]
        except OSError:
            return "onnx:missing"
        return f"onnx:{st.st_size}:{st.st_mtime_ns}:{side}"

    def setup(self, args: Mapping[str, Any], context: BlockContext) -> None:
        self.keep = parse_keep(str(args.get("keep-bounding-boxes") or ""))
        self.min_conf = args["min-confidence"]  # typed, its default in parameters.json only
        self.replace = bool(args.get("delete-existing-bounding-boxes", True))
        self.one_box = str(args.get("one-box-per-object", False)).lower() not in ("false", "0", "no", "")
        self.served = bool(args.get("source-url"))
        self.onnx: OnnxModel | None = None
        if self.served:
            self.url = str(args["source-url"]).rstrip("/")
            self.source = str(args["source-model"])
            self.key = context.secrets.get("SOURCE_API_KEY", "")
            self.model_name = f"{self.url}/{self.source}"
            self.task = str(args.get("task") or "auto")
            self._served_classes()
            return
        model = str(args["model"])
        if model.lower().endswith(".onnx"):
            self._setup_onnx(model, args, context)
            return
        require_model(model)
        super().setup(args, context)
        import torch
        from transformers import (
            AutoConfig,
            AutoImageProcessor,
            AutoModelForImageClassification,
            AutoModelForObjectDetection,
        )
        from transformers.models.auto.modeling_auto import MODEL_FOR_OBJECT_DETECTION_MAPPING_NAMES

        torch.set_grad_enabled(False)
        config = load_pretrained(AutoConfig.from_pretrained, model)
        task = str(args.get("task") or "auto")
        if task == "auto":
            task = "detection" if config.model_type in MODEL_FOR_OBJECT_DETECTION_MAPPING_NAMES else "classification"
        self.task = task
        loader = AutoModelForObjectDetection if task == "detection" else AutoModelForImageClassification
        loaded: Any = load_pretrained(loader.from_pretrained, model)
        self.model = loaded.to(self.device).eval()
        self.processor = load_pretrained(lambda m, **kw: AutoImageProcessor.from_pretrained(m, backend="pil", **kw),
                                         model)
        self.model_name = model
        self.classes = [str(config.id2label[i]) for i in sorted(config.id2label)]
        check_keep(self.keep, self.classes, f"model {model}")

    def _setup_onnx(self, model: str, args: Mapping[str, Any], context: BlockContext) -> None:
        from .onnx_source import OnnxModel

        super().setup(args, context)
        self.onnx = OnnxModel(Path(model).expanduser(), self.device)
        task = str(args.get("task") or "auto")
        if task not in ("auto", self.onnx.task):
            raise BlockError(f"task {task}: the model's sidecar says it is a {self.onnx.task} model")
        self.task, self.classes, self.model_name = self.onnx.task, self.onnx.classes, model
        check_keep(self.keep, self.classes, f"model {model}")

    def _served_classes(self) -> None:
        """A served model's classes are known from its answers only: nothing to check ahead,
        but the server must know the model (its registry, loading it if need be)."""
        import requests

        try:
            r = requests.post(f"{self.url}/model/add", json={"model_id": self.source, "api_key": self.key}, timeout=600)
        except requests.RequestException as e:
            raise BlockError(f"source-url {self.url}: cannot reach the server ({type(e).__name__})") from None
        if r.status_code != 200:
            raise BlockError(f"source-model {self.source}: the server refused it ({r.status_code}): "
                             f"{_message(r)}")
        found = [m for m in r.json().get("models", []) if m.get("model_id") == self.source]
        if self.task == "auto":
            self.task = "detection" if found and found[0].get("task_type") == "object-detection" else "classification"

    # --- labeling ----------------------------------------------------------------------------------------

    def label(self, batch: Sequence[SampleInput], args: Mapping[str, Any],
              context: BlockContext) -> list[SampleChange | SampleFailure]:
        if self.served:
            return [self._served_one(inp, context) for inp in batch]
        items = list(batch)
        chunks = [items[i : i + self.micro_batch] for i in range(0, len(items), self.micro_batch)]
        pending: deque[Future[list[Any]]] = deque(self.pool.submit(self._prepare, c) for c in chunks[:2])
        queued = len(pending)
        out: list[SampleChange | SampleFailure] = []
        k = 0
        while pending:
            prepared = pending.popleft().result()
            if queued < len(chunks):
                pending.append(self.pool.submit(self._prepare, chunks[queued]))
                queued += 1
            chunk = chunks[k]
            k += 1
            ok = [p for p in prepared if not isinstance(p, SampleFailure)]
            results = self._forward(ok) if ok else []
            it = iter(results)
            for inp, p in zip(chunk, prepared, strict=True):
                if isinstance(p, SampleFailure):
                    out.append(p)
                    continue
                out.append(self._change(inp, next(it), context))
        return out

    def _prepare(self, chunk: Sequence[SampleInput]) -> list[Any]:
        out: list[Any] = []
        for inp in chunk:
            try:
                out.append(inp.image())
            except Exception as e:  # this image fails alone
                out.append(SampleFailure(f"cannot read the image: {e}"))
        return out

    def _forward(self, images: list[Any]) -> list[list[tuple[str, float, tuple[float, ...] | None]]]:
        """Per image: (class, score, xyxy box or None) predictions above min-confidence."""
        if self.onnx is not None:
            return self.onnx.predict(images, self.min_conf)
        import torch

        inputs = self.processor(images=images, return_tensors="pt")
        inputs = {k: v.to(self.device) for k, v in inputs.items() if hasattr(v, "to")}
        with self.autocast():
            outputs = self.model(**inputs)
        if self.task == "classification":
            probs = torch.softmax(outputs.logits.float(), dim=-1).cpu().numpy()
            res = []
            for p in probs:
                best = int(p.argmax())
                res.append([(self.classes[best], float(p[best]), None)] if p[best] >= self.min_conf else [])
            return res
        sizes = torch.tensor([[im.height, im.width] for im in images])
        for name in ("logits", "pred_boxes"):
            if hasattr(outputs, name):
                setattr(outputs, name, getattr(outputs, name).float())
        post = self.processor.post_process_object_detection(outputs, threshold=self.min_conf, target_sizes=sizes)
        return [[(self.classes[int(lab)], float(sc), tuple(float(v) for v in box))
                 for sc, lab, box in zip(d["scores"].tolist(), d["labels"].tolist(), d["boxes"].tolist(), strict=True)]
                for d in post]

    def _change(self, inp: SampleInput, preds: list[tuple[str, float, tuple[float, ...] | None]],
                context: BlockContext) -> SampleChange:
        s = inp.sample
        metadata = with_provenance(s, labeled_by=self.model_name)
        if self.task == "classification":
            context.records[s.id] = {"scores": [[c, round(sc, 4)] for c, sc, _ in preds]}
            label = preds[0][0] if preds else None
            if label is not None and self.keep:
                label = self.keep.get(label)
            return SampleChange(label=label, metadata=metadata)
        width, height = s.width or 0, s.height or 0
        boxes = []
        for c, sc, xyxy in preds:
            if self.keep and c not in self.keep:
                continue
            b = pixel_box(self.keep.get(c, c), sc, *(xyxy or (0, 0, 0, 0)), width, height)
            if b is not None:
                boxes.append(b)
        record: dict[str, Any] = {}
        if self.one_box:
            boxes, same = one_box_per_object(boxes)
            if same:
                record["near_misses"] = same
        context.records[s.id] = {"boxes": len(boxes), **record}
        existing = [] if self.replace else list(s.bounding_boxes)
        return SampleChange(bounding_boxes=existing + boxes, metadata=metadata)

    def _served_one(self, inp: SampleInput, context: BlockContext) -> SampleChange | SampleFailure:
        import requests

        endpoint = "/infer/object_detection" if self.task == "detection" else "/infer/classification"
        try:
            data = inp.read_bytes()
            r = requests.post(self.url + endpoint, timeout=600, json={
                "model_id": self.source, "api_key": self.key,
                "image": {"type": "base64", "value": base64.b64encode(data).decode()}})
        except requests.RequestException as e:
            return SampleFailure(f"the served model did not answer ({type(e).__name__})")
        if r.status_code != 200:
            return SampleFailure(f"the served model refused the image ({r.status_code}): {_message(r)}")
        answer = r.json()
        s = inp.sample
        width, height = s.width or 0, s.height or 0
        # the answer is in the pixels of the image as sent: scale to the stored size (the same here)
        img = answer.get("image") or {}
        sx = width / img["width"] if img.get("width") else 1.0
        sy = height / img["height"] if img.get("height") else 1.0
        if self.task == "classification":
            preds = [(p["class"], float(p.get("confidence", 1.0)), None) for p in answer.get("predictions", [])]
            preds = [p for p in sorted(preds, key=lambda p: -p[1]) if p[1] >= self.min_conf][:1]
            return self._change(inp, preds, context)
        preds = []
        for p in answer.get("predictions", []):
            if float(p.get("confidence", 1.0)) < self.min_conf:
                continue
            x0, y0 = (p["x"] - p["width"] / 2) * sx, (p["y"] - p["height"] / 2) * sy
            preds.append((str(p["class"]), float(p.get("confidence", 1.0)),
                          (x0, y0, x0 + p["width"] * sx, y0 + p["height"] * sy)))
        return self._change(inp, preds, context)


def _message(r: Any) -> str:
    try:
        body = r.json()
        return str(body.get("message") or body.get("error") or body)[:300]
    except ValueError:
        return r.text[:300]

