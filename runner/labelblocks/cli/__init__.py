"""The ``labelblocks`` command. Thin: parse, call the library, print; one module per command
group (samples, actions, proposals, jobs, blocks, keys, secrets, ...), assembled in :mod:`.main`."""

from __future__ import annotations

from .main import main

__all__ = ["main"]
