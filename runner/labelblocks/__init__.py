"""labelblocks: a self-hosted, plugin-based runner for AI labeling blocks.

This module is the block author's face: everything a block plugin needs is importable from
here, and the bundled blocks import nothing else of the core. Names load on first use, so
``import labelblocks`` (and the CLI's start-up) stays light::

    from labelblocks import Block, BlockContext, SampleChange, hookimpl

    class Shout(Block):
        name = "shout"
        ...

    @hookimpl
    def register_blocks(register):
        register(Shout)
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# name -> the module that defines it
_FACE = {
    # writing a block
    "Block": "blocks",
    "BlockContext": "blocks",
    "SampleInput": "blocks",
    "SampleFailure": "blocks",
    "CostEstimate": "blocks",
    "merged_metadata": "blocks",
    "with_provenance": "blocks",
    "one_box_per_object": "blocks",
    "hookimpl": "hookspecs",
    # the shapes a block reads and proposes
    "Sample": "model",
    "SampleChange": "model",
    "BoundingBox": "model",
    "StructuredLabel": "model",
    # errors a block raises
    "BlockError": "errors",
    "MissingSecret": "errors",
    "StopJob": "errors",
    # model blocks: device, precision and weights
    "ModelBlock": "accel",
    "load_pretrained": "accel",
    "require_model": "accel",
    # secrets never printed
    "redact": "secrets",
    # media
    "open_audio": "media",
}

__all__ = [
    "Block", "BlockContext", "BlockError", "BoundingBox", "CostEstimate", "MissingSecret", "ModelBlock", "Sample",
    "SampleChange", "SampleFailure", "SampleInput", "StopJob", "StructuredLabel", "__version__", "hookimpl",
    "load_pretrained", "merged_metadata", "one_box_per_object", "open_audio", "redact", "require_model",
    "with_provenance",
]


def __getattr__(name: str) -> Any:
    module = _FACE.get(name)
    if module is None:
        raise AttributeError(f"module 'labelblocks' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # the next lookup is a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


if TYPE_CHECKING:  # what type checkers and editors see
    from .accel import ModelBlock, load_pretrained, require_model
    from .blocks import (
        Block,
        BlockContext,
        CostEstimate,
        SampleFailure,
        SampleInput,
        merged_metadata,
        one_box_per_object,
        with_provenance,
    )
    from .errors import BlockError, MissingSecret, StopJob
    from .hookspecs import hookimpl
    from .media import open_audio
    from .model import BoundingBox, Sample, SampleChange, StructuredLabel
    from .secrets import redact
