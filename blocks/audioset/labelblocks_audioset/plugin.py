"""The labelblocks plugin of this distribution: registers the `audioset` block through the
`register_blocks` hook (see labelblocks.hookspecs). Importing it does not import torch."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from labelblocks import hookimpl

from .block import AudioSet

BLOCKS: list[Any] = [AudioSet]


@hookimpl
def register_blocks(register: Callable[[Any], Any]) -> None:
    for block in BLOCKS:
        register(block)
