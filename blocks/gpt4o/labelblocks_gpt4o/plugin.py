"""The labelblocks plugin of this distribution: registers the three GPT-4o blocks through the
`register_blocks` hook (see labelblocks.hookspecs)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from labelblocks import hookimpl

from .block import BoxRelabel, BoxValidate, ImageLabel

BLOCKS: list[Any] = [ImageLabel, BoxRelabel, BoxValidate]


@hookimpl
def register_blocks(register: Callable[[Any], Any]) -> None:
    for block in BLOCKS:
        register(block)
