"""The hooks a labelblocks plugin may implement. Hooks only ever grow by adding arguments."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from .blocks import Block

hookspec = pluggy.HookspecMarker("labelblocks")
hookimpl = pluggy.HookimplMarker("labelblocks")


@hookspec
def register_blocks(register: Callable[[type[Block]], Any]) -> None:
    """Register the plugin's blocks.

    Called once, when the plugin manager first builds the block registry (listing blocks,
    showing one, validating or running an action). ``register(BlockClass)`` checks the block
    class (it must subclass :class:`labelblocks.blocks.Block` and carry a valid
    parameters.json), records which plugin and version it came from, and raises
    :class:`labelblocks.errors.PluginError` for a duplicate block name. Import heavy
    libraries (torch, transformers) inside the block's methods, not at module level.
    Returns nothing; every plugin's implementation is called.
    """


@hookspec
def register_feature_extractors(register: Callable[[type[Any]], Any]) -> None:
    """Register the plugin's feature extractors (subclasses of
    :class:`labelblocks.extractors.FeatureExtractor`), by name: what `labelblocks learn
    --features NAME` computes from each sample before a learn block trains on it. Called once,
    when the extractor registry is first built; a duplicate name raises PluginError."""
