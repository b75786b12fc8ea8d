"""A CPU-bound block for the Ray engine's benchmark (importable by Ray's workers: the
benchmark puts this folder on their PYTHONPATH): it decodes each image and runs a fixed
amount of numpy work on it (2-D FFTs, single-threaded): 18 ms an image on a 2-core test machine."""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from labelblocks.blocks import Block
from labelblocks.hookspecs import hookimpl
from labelblocks.model import SampleChange


class CpuBound(Block):
    name = "bench-cpu"
    parameters: ClassVar[dict[str, Any]] = {"version": 1, "type": "ai-action",
        "info": {"name": "CPU-bound benchmark block", "description": "decode + FFTs",
                 "operatesOn": ["images_single_label"]},
        "parameters": [{"name": "Rounds", "type": "int", "param": "rounds", "value": 6}]}
    default_batch_size = 16

    def label(self, batch, args, context):  # type: ignore[no-untyped-def]
        out = []
        for s in batch:
            a = np.asarray(s.image().convert("L").resize((256, 256)), dtype=np.float32)
            for _ in range(int(args["rounds"])):
                a = np.abs(np.fft.ifft2(np.fft.fft2(a) * 0.5)).astype(np.float32)
            out.append(SampleChange(label="bright" if float(a.mean()) > 1e-3 else "dark"))
        return out


class Plugin:
    @hookimpl
    def register_blocks(self, register: Any) -> None:
        register(CpuBound)
