"""The project store: :class:`Store`, the database with its reads and writes of samples."""

from __future__ import annotations

from .writes import SampleWrites


class Store(SampleWrites):
    """A project's samples. Open with :meth:`open`; use as a context manager or call close()."""
