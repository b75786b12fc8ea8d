"""Feature extractors: what a learn block (`labelblocks learn`) trains on. An extractor turns a
sample's media into one feature vector per window (an image is one window), in batches; it is
registered by a plugin (hook ``register_feature_extractors``) under a name, and its results
are cached per (sample content, extractor, its parameters), so training again computes nothing
new."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Literal

import numpy as np


class FeatureExtractor:
    """Subclass and set ``name``, ``modality``, ``parameters`` (name -> default, all text),
    and implement :meth:`extract`. Heavy imports (torch) belong in :meth:`setup`."""

    name: ClassVar[str] = ""
    modality: ClassVar[Literal["image", "audio"]] = "image"
    description: ClassVar[str] = ""
    version: ClassVar[str] = "1"  # bump when the same parameters would give other features
    parameters: ClassVar[dict[str, str]] = {}
    batch_size: ClassVar[int] = 16

    def __init__(self, params: Mapping[str, str] | None = None) -> None:
        unknown = set(params or {}) - set(self.parameters)
        if unknown:
            raise ValueError(f"feature extractor {self.name}: unknown parameter(s) {', '.join(sorted(unknown))} "
                             f"(it takes {', '.join(sorted(self.parameters)) or 'none'})")
        self.params = {**self.parameters, **(params or {})}

    def key(self) -> str:
        """What identifies its results: name, version and parameters (the cache's key)."""
        text = json.dumps({"name": self.name, "version": self.version, "params": self.params}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:32]

    def setup(self) -> None:
        """Called once before the first batch: load models here."""

    def ready(self) -> None:
        """:meth:`setup`, the first time only: an extractor already set up (a model loaded) is
        used as it is."""
        if not getattr(self, "_set_up", False):
            self.setup()
            self._set_up = True

    def extract(self, batch: Sequence[bytes]) -> list[np.ndarray | Exception]:
        """Per file (its bytes), a float32 array [windows, dim], or the exception that made
        this file unreadable (it fails alone)."""
        raise NotImplementedError

    def prepare(self, batch: Sequence[bytes]) -> Any:
        """Work on a batch that can run ahead, in another thread, while the previous batch is
        in :meth:`run` (decoding, preprocessing); by default none."""
        return batch

    def run(self, prepared: Any) -> list[np.ndarray | Exception]:
        """The rest of the work on a batch :meth:`prepare` returned; by default :meth:`extract`."""
        return self.extract(prepared)

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "modality": self.modality, "version": self.version, "parameters": self.params}
