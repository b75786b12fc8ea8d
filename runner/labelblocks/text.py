"""Text checks every input passes: valid Unicode (no lone surrogate) and bounded JSON.

Kept apart from :mod:`labelblocks.model` (pydantic) so that commands which only read, such as
``samples list``, check their input without importing pydantic."""

from __future__ import annotations

import json
import re
from typing import Any

from .errors import InvalidInput

CATEGORIES = ("training", "validation", "testing")
MAX_INT = 2**63 - 1  # the largest integer a database column holds (SQLite INTEGER, PostgreSQL bigint)


def check_text(value: str, what: str) -> str:
    """``value`` if it is valid Unicode text (encodable as UTF-8); a lone surrogate, which a
    JSON escape such as ``\\ud800`` or a file name of undecodable bytes can carry, is refused."""
    try:
        return text_value(value)
    except ValueError as e:
        raise InvalidInput(f"{what}: {e}; send UTF-8 text") from None


# a JSON escape of a UTF-16 surrogate: only then can parsed JSON hold a lone one
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def parse_json(text: str | bytes, what: str, expected: str | None = None) -> Any:
    """JSON ``text`` parsed, or InvalidInput saying why not: invalid JSON or UTF-8, nesting
    deeper than Python can parse (a hostile ``[[[[...``), text with a lone surrogate. ``what``
    names the input in messages; ``expected`` says what it should have been."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        if expected:
            raise InvalidInput(f"{what}: expected {expected}, got invalid JSON ({e})") from None
        raise InvalidInput(f"{what}: not valid JSON ({e})") from None
    except UnicodeDecodeError as e:
        raise InvalidInput(f"{what}: not UTF-8 ({e.reason} at byte {e.start})") from None
    except RecursionError:
        raise InvalidInput(f"{what}: JSON nested too deeply") from None
    probe = text if isinstance(text, str) else text.decode("utf-8", "replace")
    if _SURROGATE_ESCAPE.search(probe):
        try:
            json.dumps(data, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError as e:
            raise InvalidInput(f"{what}: not valid Unicode text (a lone surrogate {e.object[e.start]!r}); "
                               "send UTF-8 text") from None
    return data


def text_value(v: str) -> str:
    """A pydantic validator's form of :func:`check_text` (ValueError, worded for a field)."""
    try:
        v.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ValueError(f"not valid Unicode text (a lone surrogate {v[e.start]!r} at position {e.start})") from None
    return v
