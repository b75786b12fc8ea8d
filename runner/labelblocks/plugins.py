"""Plugin discovery (pluggy, entry-point group ``labelblocks``) and the block registry.

Loaded lazily: nothing is imported or registered until a command needs the blocks. Entry
points load one by one; one that fails is reported (logged on stderr) and the rest still
work. ``LABELBLOCKS_RAISE_PLUGIN_ERRORS=1`` makes a failure fatal (for plugin authors);
``LABELBLOCKS_LOAD_PLUGINS=a,b`` loads only the named entry points.
"""

from __future__ import annotations

import logging
import os
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import metadata as importlib_metadata
from typing import Any

import pluggy

from . import hookspecs
from .blocks import Block
from .errors import InvalidInput, NotFound, PluginError
from .extractors import FeatureExtractor

ENTRY_POINT_GROUP = "labelblocks"
RAISE_ENV = "LABELBLOCKS_RAISE_PLUGIN_ERRORS"
ALLOW_ENV = "LABELBLOCKS_LOAD_PLUGINS"
BUILTIN = "labelblocks (built-in)"
BUILTIN_FEATURES = "labelblocks (built-in feature extractors)"

log = logging.getLogger("labelblocks.plugins")


@dataclass
class PluginInfo:
    name: str
    distribution: str | None = None
    version: str | None = None
    module: str | None = None
    blocks: list[str] = field(default_factory=list)
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {"name": self.name, "distribution": self.distribution, "version": self.version,
                             "module": self.module, "blocks": self.blocks}
        if self.error:
            d["error"] = self.error
        return d


@dataclass
class RegisteredBlock:
    cls: type[Block]
    plugin: str
    version: str

    @property
    def name(self) -> str:
        return self.cls.name

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "title": self.cls.title(), "plugin": self.plugin, "version": self.version,
                "operatesOn": self.cls.operates_on()}


class BlockRegistry:
    def __init__(self) -> None:
        self.blocks: dict[str, RegisteredBlock] = {}
        # consulted for a name no block has (an organization block's NAME@VERSION)
        self.resolvers: list[Callable[[str], RegisteredBlock | None]] = []

    def register(self, cls: Any, plugin: str, version: str) -> None:
        if not isinstance(cls, type) or not issubclass(cls, Block):
            raise PluginError(f"plugin {plugin} registered {cls!r}, expected a subclass of labelblocks.blocks.Block")
        name = getattr(cls, "name", None)
        if not isinstance(name, str) or not name:
            raise PluginError(f"plugin {plugin}: block class {cls.__name__} has no name")
        try:
            cls.spec()
        except InvalidInput as e:
            raise PluginError(f"plugin {plugin}: block {name}: {e}") from None
        if name in self.blocks:
            other = self.blocks[name]
            raise PluginError(
                f"plugin {plugin} registers a block named {name!r}, but plugin {other.plugin} already did: "
                "block names must be unique (uninstall one, or limit plugins with LABELBLOCKS_LOAD_PLUGINS)"
            )
        self.blocks[name] = RegisteredBlock(cls, plugin, f"{version}+{cls.version}" if cls.version != "0" else version)

    def get(self, name: str) -> RegisteredBlock:
        try:
            return self.blocks[name]
        except KeyError:
            for resolve in self.resolvers:
                found = resolve(name)
                if found is not None:
                    return found
            known = ", ".join(sorted(self.blocks)) or "none"
            raise NotFound(f"no block named {name!r} (installed blocks: {known}; see `labelblocks blocks list`)") from None


class Plugins:
    """The plugin manager and what it loaded."""

    def __init__(self) -> None:
        self.pm = pluggy.PluginManager("labelblocks")
        self.pm.add_hookspecs(hookspecs)
        self.infos: dict[str, PluginInfo] = {}
        self._registry: BlockRegistry | None = None
        self._extractors: dict[str, type[FeatureExtractor]] | None = None

    def _fatal(self) -> bool:
        return os.environ.get(RAISE_ENV, "") not in ("", "0")

    def load(self) -> None:
        from . import __version__, builtin_blocks, builtin_features

        self.pm.register(builtin_blocks, name=BUILTIN)
        self.infos[BUILTIN] = PluginInfo(BUILTIN, "labelblocks", __version__, builtin_blocks.__name__)
        self.pm.register(builtin_features, name=BUILTIN_FEATURES)
        allow = os.environ.get(ALLOW_ENV)
        allowed = {a.strip() for a in allow.split(",") if a.strip()} if allow is not None else None
        for ep in sorted(importlib_metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
            if allowed is not None and ep.name not in allowed:
                continue
            if ep.name in self.infos:
                continue
            dist = getattr(ep, "dist", None)
            info = PluginInfo(ep.name, dist.name if dist else None, dist.version if dist else None, ep.value)
            self.infos[ep.name] = info
            try:
                obj = ep.load()
                self.pm.register(obj, name=ep.name)
            except Exception as e:
                info.error = f"{type(e).__name__}: {e}"
                if self._fatal():
                    raise PluginError(f"plugin {ep.name} ({ep.value}) failed to load: {info.error}") from e
                log.warning("plugin %s (%s) failed to load and is skipped: %s", ep.name, ep.value, info.error)
                log.debug("%s", traceback.format_exc())
        self.pm.check_pending()

    def extractors(self) -> dict[str, type[FeatureExtractor]]:
        """The feature extractors every plugin registered, by name."""
        if self._extractors is not None:
            return self._extractors
        found: dict[str, type[FeatureExtractor]] = {}
        for impl in self.pm.hook.register_feature_extractors.get_hookimpls():

            def register(cls: Any, _plugin: str = impl.plugin_name) -> None:
                if not isinstance(cls, type) or not issubclass(cls, FeatureExtractor) or not cls.name:
                    raise PluginError(f"plugin {_plugin} registered {cls!r}, expected a named subclass of "
                                      "labelblocks.extractors.FeatureExtractor")
                if cls.name in found:
                    raise PluginError(f"plugin {_plugin} registers a feature extractor named {cls.name!r}, "
                                      "but another plugin already did")
                found[cls.name] = cls

            try:
                impl.function(register=register)
            except PluginError:
                raise
            except Exception as e:
                log.warning("plugin %s: register_feature_extractors failed, skipped: %s", impl.plugin_name, e)
        self._extractors = found
        return found

    def registry(self) -> BlockRegistry:
        if self._registry is not None:
            return self._registry
        reg = BlockRegistry()
        for impl in self.pm.hook.register_blocks.get_hookimpls():
            name = impl.plugin_name
            info = self.infos.get(name) or PluginInfo(name)
            self.infos.setdefault(name, info)
            version = info.version or "0"

            def register(cls: Any, _name: str = name, _version: str = version, _info: PluginInfo = info) -> None:
                reg.register(cls, _name, _version)
                _info.blocks.append(cls.name)

            try:
                impl.function(register=register)
            except Exception as e:
                info.error = f"{type(e).__name__}: {e}"
                if self._fatal():
                    raise PluginError(f"plugin {name}: register_blocks failed: {info.error}") from e
                log.warning("plugin %s: register_blocks failed, its blocks are skipped: %s", name, info.error)
        self._registry = reg
        return reg


_plugins: Plugins | None = None


def get_plugins() -> Plugins:
    """The process-wide plugin manager, loaded on first use."""
    global _plugins
    if _plugins is None:
        p = Plugins()
        p.load()
        _plugins = p
    return _plugins


def get_registry() -> BlockRegistry:
    return get_plugins().registry()


def reset() -> None:
    """Forget loaded plugins (tests, and after installing a plugin in-process)."""
    global _plugins
    _plugins = None
