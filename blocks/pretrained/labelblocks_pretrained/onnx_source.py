"""An ONNX model as the pretrained block's source (``model=path/to/model.onnx``), run with
onnxruntime (the block's ``onnx`` extra). A sidecar beside it, ``model.json`` (the same name,
``.json``), says what transformers' config would: the task, the class names, the input (size,
layout, scaling and normalisation) and the outputs' layout::

    {"task": "classification", "classes": ["cat", "dog"],
     "input": {"width": 224, "height": 224, "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]},
     "output": {"scores": "logits", "softmax": true}}

    {"task": "detection", "classes": ["person", "car"],
     "input": {"width": 640, "height": 640},
     "output": {"boxes": "boxes", "scores": "scores", "classes": "labels",
                "box_format": "xyxy", "normalized": true}}

Images are resized to the input size (bilinear, as transformers' image processors do) after
EXIF orientation; detection boxes come back in the original image's pixels.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from labelblocks import BlockError

Prediction = tuple[str, float, tuple[float, ...] | None]  # (class, score, xyxy box in image pixels or None)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class InputSpec(_Strict):
    name: str | None = None  # the model's input (default: its first)
    width: int = Field(gt=0, le=8192)
    height: int = Field(gt=0, le=8192)
    layout: Literal["NCHW", "NHWC"] = "NCHW"
    scale: float = 1 / 255  # applied to 0..255 pixel values before mean and std
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)


class OutputSpec(_Strict):
    scores: str | None = None  # classification: class scores per image; detection: a score per box
    softmax: bool = True  # classification: the scores are logits
    boxes: str | None = None  # detection: [batch, boxes, 4]
    classes: str | None = None  # detection: [batch, boxes], class indices
    box_format: Literal["xyxy", "cxcywh", "xywh"] = "xyxy"
    normalized: bool = True  # boxes in 0..1 of the input (else in the input's pixels)


class Sidecar(_Strict):
    task: Literal["classification", "detection"]
    classes: list[str] = Field(min_length=1)
    input: InputSpec
    output: OutputSpec = OutputSpec()

    @model_validator(mode="after")
    def _outputs(self) -> Sidecar:
        if self.task == "detection" and not (self.output.boxes and self.output.scores and self.output.classes):
            raise ValueError("a detection model's output names boxes, scores and classes")
        return self


def sidecar_path(model: Path) -> Path:
    return model.with_suffix(".json")


class OnnxModel:
    """An ONNX classifier or detector with its sidecar."""

    def __init__(self, path: Path, device: str) -> None:
        if not path.is_file():
            raise BlockError(f"model {path}: no such file")
        side = sidecar_path(path)
        try:
            self.spec = Sidecar.model_validate(json.loads(side.read_text()))
        except FileNotFoundError:
            raise BlockError(f"model {path}: its sidecar {side.name} is missing (task, classes, input, output: "
                             "see the block's README)") from None
        except (ValueError, ValidationError) as e:
            raise BlockError(f"model {path}: sidecar {side.name}: {e}") from None
        try:
            import onnxruntime
        except ImportError:
            raise BlockError("an ONNX model needs onnxruntime: pip install 'labelblocks-pretrained[onnx]'") from None
        providers = ["CPUExecutionProvider"]
        if device.startswith("cuda") and "CUDAExecutionProvider" in onnxruntime.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        try:
            self.session = onnxruntime.InferenceSession(str(path), providers=providers)
        except Exception as e:  # onnxruntime's own errors: a file that is not a model
            raise BlockError(f"model {path}: onnxruntime cannot load it: {e}") from None
        inputs = [i.name for i in self.session.get_inputs()]
        outputs = {o.name for o in self.session.get_outputs()}
        self.input = self.spec.input.name or inputs[0]
        wanted = [n for n in (self.spec.output.scores, self.spec.output.boxes, self.spec.output.classes) if n]
        missing = [n for n in [self.input] if n not in inputs] + [n for n in wanted if n not in outputs]
        if missing:
            raise BlockError(f"model {path}: sidecar names {', '.join(missing)}, which the model lacks "
                             f"(inputs {', '.join(inputs)}; outputs {', '.join(sorted(outputs))})")
        self.task = self.spec.task
        self.classes = self.spec.classes

    def _tensor(self, images: list[Any]) -> np.ndarray:
        from PIL import Image

        i = self.spec.input
        arrays = [np.asarray(im.convert("RGB").resize((i.width, i.height), Image.Resampling.BILINEAR), dtype=np.float32)
                  for im in images]
        x = (np.stack(arrays) * i.scale - np.asarray(i.mean, np.float32)) / np.asarray(i.std, np.float32)
        return np.ascontiguousarray(x.transpose(0, 3, 1, 2) if i.layout == "NCHW" else x, dtype=np.float32)

    def predict(self, images: list[Any], min_confidence: float) -> list[list[Prediction]]:
        """Per image: the predictions scoring at least ``min_confidence``."""
        o = self.spec.output
        names = [o.scores] if self.task == "classification" else [o.boxes, o.scores, o.classes]
        got = self.session.run(names, {self.input: self._tensor(images)})
        if self.task == "classification":
            return [self._classify(np.asarray(row, np.float64), min_confidence) for row in got[0]]
        return [self._detect(boxes, scores, classes, im.width, im.height, min_confidence)
                for boxes, scores, classes, im in zip(got[0], got[1], got[2], images, strict=True)]

    def _classify(self, scores: np.ndarray, min_confidence: float) -> list[Prediction]:
        if self.spec.output.softmax:
            e = np.exp(scores - scores.max())
            scores = e / e.sum()
        best = int(scores.argmax())
        if best >= len(self.classes):
            raise BlockError(f"the model scored class {best}; the sidecar names {len(self.classes)} classes")
        return [(self.classes[best], float(scores[best]), None)] if scores[best] >= min_confidence else []

    def _detect(self, boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray, width: int, height: int,
                min_confidence: float) -> list[Prediction]:
        o, i = self.spec.output, self.spec.input
        sx, sy = (width, height) if o.normalized else (width / i.width, height / i.height)
        out: list[Prediction] = []
        for box, score, cls in zip(np.asarray(boxes, np.float64).reshape(-1, 4), np.ravel(scores), np.ravel(classes),
                                   strict=True):
            if score < min_confidence:
                continue
            a, b, c, d = box
            if o.box_format == "cxcywh":
                a, b, c, d = a - c / 2, b - d / 2, a + c / 2, b + d / 2
            elif o.box_format == "xywh":
                c, d = a + c, b + d
            k = int(cls)
            if not 0 <= k < len(self.classes):
                raise BlockError(f"the model gave class {k}; the sidecar names {len(self.classes)} classes")
            out.append((self.classes[k], float(score), (a * sx, b * sy, c * sx, d * sy)))
        return out
