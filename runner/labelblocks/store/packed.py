"""Sample ids packed into one binary value (a job's selection, an applied chunk, a split's)."""

from __future__ import annotations

import sys
from array import array
from collections.abc import Iterable


def pack_ids(ids: Iterable[int]) -> bytes:
    """Sample ids as little-endian int64s: a job's 100,000 ids are one 800 kB value."""
    a = array("q", ids)
    if sys.byteorder == "big":
        a.byteswap()
    return a.tobytes()


def unpack_ids(data: bytes | None) -> list[int]:
    a = array("q")
    a.frombytes(data or b"")
    if sys.byteorder == "big":
        a.byteswap()
    return a.tolist()
