"""The labelblocks plugin of this distribution: registers the `pretrained` block. Importing it
does not import torch."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from labelblocks import hookimpl

from .block import Pretrained


@hookimpl
def register_blocks(register: Callable[[Any], Any]) -> None:
    register(Pretrained)
