"""External blocks: any program or container image with a parameters.json, talking to the
project over the protocol's HTTP API. This module registers them (add / remove / list);
:mod:`labelblocks.executors.external` runs them.

``labelblocks blocks add DIR`` registers a block folder (its parameters.json and the command
to run: given, or taken from its Dockerfile's ENTRYPOINT / CMD); ``blocks add --image``
registers a container image. Each registered block becomes an :class:`ExternalBlock` class
in the project's block registry (:func:`add_to_registry`).
"""

from __future__ import annotations

import hashlib
import json
import shlex
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from .blocks import Block
from .errors import InvalidInput, NotFound
from .parameters import load_parameters
from .store import Store
from .store.external_blocks import ExternalBlockRow, delete_external_block, list_external_blocks, save_external_block

if TYPE_CHECKING:
    from .plugins import BlockRegistry

EXTERNAL_PLUGIN = "external"


class ExternalBlock(Block):
    """A registered external block (a subclass is made per registered block)."""

    executor: ClassVar[str] = "external"
    kind: ClassVar[str] = "command"  # command | image
    command: ClassVar[list[str]] = []
    directory: ClassVar[str | None] = None
    image: ClassVar[str | None] = None
    timeout: ClassVar[float | None] = None

    @classmethod
    def describe(cls) -> str:
        if cls.kind == "image":
            return f"container image {cls.image}" + (f" with {shlex.join(cls.command)}" if cls.command else "")
        return f"{shlex.join(cls.command)} (in {cls.directory})"


# --- registering ---------------------------------------------------------------------------------


def dockerfile_command(dockerfile: Path) -> list[str] | None:
    """The command a Dockerfile runs: its last ENTRYPOINT (exec or shell form), else its last
    CMD; None if it has neither."""
    entry: list[str] | None = None
    cmd: list[str] | None = None
    text = dockerfile.read_text(encoding="utf-8", errors="replace").replace("\\\n", " ")
    for line in text.splitlines():
        parts = line.strip().split(None, 1)
        if len(parts) != 2 or parts[0].upper() not in ("ENTRYPOINT", "CMD"):
            continue
        arg = parts[1].strip()
        value: list[str]
        if arg.startswith("["):
            try:
                parsed = json.loads(arg)
            except json.JSONDecodeError:
                raise InvalidInput(f"{dockerfile}: cannot read {parts[0]} {arg!r} (expected a JSON array)") from None
            if not isinstance(parsed, list) or not all(isinstance(x, str) for x in parsed):
                raise InvalidInput(f"{dockerfile}: {parts[0]} must be a JSON array of strings")
            value = parsed
        else:
            value = shlex.split(arg)
        if parts[0].upper() == "ENTRYPOINT":
            entry = value
        else:
            cmd = value
    return entry if entry else cmd


def _version(spec: dict[str, Any], kind: str, command: Sequence[str], image: str | None, directory: str | None) -> str:
    """Changes when the block's definition or its folder's files change (cache keys use it)."""
    h = hashlib.sha256(json.dumps([spec, kind, list(command), image], sort_keys=True).encode())
    if directory and Path(directory).is_dir():
        for n, p in enumerate(sorted(Path(directory).rglob("*"))):
            if n >= 5000:
                break
            if p.is_file() and "__pycache__" not in p.parts:
                st = p.stat()
                h.update(f"{p}:{st.st_size}:{st.st_mtime_ns}".encode())
    return "ext-" + h.hexdigest()[:10]


def add_block(store: Store, registry: BlockRegistry, path: Path | None = None, command: str | None = None,
              image: str | None = None, parameters: Path | None = None, name: str | None = None,
              timeout: float | None = None, replace: bool = False) -> str:
    """Register an external block; returns its name. A folder needs a parameters.json; an
    image needs ``parameters`` (its parameters.json)."""
    if (path is None) == (image is None):
        raise InvalidInput("give a block folder, or --image IMAGE with --parameters FILE")
    directory: str | None = None
    argv: list[str] = []
    if path is not None:
        path = path.resolve()
        if not path.is_dir():
            raise InvalidInput(f"{path} is not a folder: expected a block folder with a parameters.json")
        params_file = parameters or path / "parameters.json"
        if not params_file.exists():
            raise InvalidInput(f"{path} has no parameters.json: a block folder needs one (or pass --parameters)")
        if command:
            argv = shlex.split(command)
        elif (path / "Dockerfile").exists():
            argv = dockerfile_command(path / "Dockerfile") or []
            if not argv:
                raise InvalidInput(f"{path / 'Dockerfile'} has no ENTRYPOINT or CMD: pass --command \"...\"")
        else:
            raise InvalidInput(f"{path} has no Dockerfile to take the command from: pass --command \"...\"")
        if not argv:
            raise InvalidInput("--command is empty")
        program = argv[0]
        if not (shutil.which(program) or shutil.which(program, path=str(path)) or (path / program).is_file()):
            raise InvalidInput(f"cannot find the block's program {program!r} on PATH or in {path}: "
                               "install it, or give the right one with --command")
        directory = str(path)
        kind = "command"
    else:
        if parameters is None:
            raise InvalidInput(f"--image {image}: also pass --parameters FILE (the image's parameters.json)")
        params_file = parameters
        argv = shlex.split(command) if command else []  # arguments before the protocol's, after the image
        kind = "image"
    spec = load_parameters(params_file)
    doc = spec.model_dump(by_alias=True, exclude_none=True)
    block_name = name or (Path(directory).name if directory else str(image).rsplit("/", 1)[-1].split(":")[0])
    block_name = "".join(ch if ch.isalnum() or ch in "-_." else "-" for ch in block_name).strip("-") or "block"
    if block_name in registry.blocks and registry.blocks[block_name].plugin != EXTERNAL_PLUGIN:
        raise InvalidInput(f"a block named {block_name!r} comes from plugin {registry.blocks[block_name].plugin}: "
                           "pick another with --name")
    save_external_block(store, ExternalBlockRow(block_name, kind, directory, argv, image, doc, timeout), replace)
    return block_name


def remove_block(store: Store, name: str) -> None:
    if not delete_external_block(store, name):
        raise NotFound(f"no external block named {name!r}: see `labelblocks blocks list`")


def external_classes(store: Store) -> list[tuple[type[ExternalBlock], str]]:
    """(block class, version) of every external block registered in the project."""
    out = []
    for r in list_external_blocks(store):
        spec = r.parameters
        attrs = {"name": r.name, "parameters": spec, "kind": r.kind, "command": r.command,
                 "directory": r.directory, "image": r.image, "timeout": r.timeout, "__doc__": spec["info"].get("description")}
        cls = type(f"External_{r.name}", (ExternalBlock,), attrs)
        out.append((cls, _version(spec, r.kind, r.command, r.image, r.directory)))
    return out


def add_to_registry(registry: BlockRegistry, store: Store) -> BlockRegistry:
    """``registry`` with the project's external blocks added (a new registry)."""
    from .plugins import BlockRegistry

    reg = BlockRegistry()
    reg.blocks = dict(registry.blocks)
    reg.resolvers = list(registry.resolvers)
    for cls, version in external_classes(store):
        if cls.name in reg.blocks:
            continue  # a plugin's block of that name wins; `blocks add` refuses such names
        reg.register(cls, EXTERNAL_PLUGIN, version)
    return reg
