"""Secrets: stored outside any project, in a file only the user can read (mode 0600).

An environment variable of the same name wins over the stored value. Values never appear
in argv, logs, job records, proposals or error messages; :func:`redact` scrubs text that
might contain them.
"""

from __future__ import annotations

import base64
import functools
import json
import os
import re
import tempfile
import urllib.parse
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

from .errors import InvalidInput, MissingSecret

CONFIG_ENV = "LABELBLOCKS_CONFIG_DIR"
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def config_dir() -> Path:
    d = os.environ.get(CONFIG_ENV)
    if d:
        return Path(d)
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "labelblocks"


def secrets_path() -> Path:
    return config_dir() / "secrets.json"


def _check_name(name: str) -> None:
    if not _NAME.match(name):
        raise InvalidInput(f"secret name {name!r}: expected letters, digits and '_' (an environment variable name)")


def _load() -> dict[str, str]:
    p = secrets_path()
    if not p.exists():
        return {}
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise InvalidInput(f"cannot read the secrets file {p}: {e}") from None
    if not isinstance(data, dict):
        raise InvalidInput(f"the secrets file {p} is damaged: expected a JSON object")
    return {str(k): str(v) for k, v in data.items()}


def _save(data: Mapping[str, str]) -> None:
    p = secrets_path()
    p.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=".secrets-")
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(dict(data), f)
        os.replace(tmp, p)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def set_secret(name: str, value: str) -> None:
    _check_name(name)
    if not value:
        raise InvalidInput(f"secret {name}: the value is empty")
    data = _load()
    data[name] = value
    _save(data)


def remove_secret(name: str) -> bool:
    data = _load()
    if name not in data:
        return False
    del data[name]
    _save(data)
    return True


def list_secrets() -> list[tuple[str, str]]:
    """(name, where) pairs: 'stored', 'environment' or 'stored, overridden by environment'."""
    stored = _load()
    out = []
    for name in sorted(stored):
        out.append((name, "stored, overridden by environment" if name in os.environ else "stored"))
    return out


def get_secret(name: str) -> str | None:
    return os.environ.get(name) or _load().get(name)


def resolve_secrets(names: Iterable[str], block: str, optional: Iterable[str] = ()) -> dict[str, str]:
    """The values of ``names`` (environment first, then the store). A missing one raises
    MissingSecret naming the command that fixes it, unless it is ``optional``."""
    stored = _load()
    out: dict[str, str] = {}
    missing = []
    for n in names:
        v = os.environ.get(n) or stored.get(n)
        if v:
            out[n] = v
        elif n not in set(optional):
            missing.append(n)
    if missing:
        cmds = " and ".join(f"`labelblocks secrets set {n}`" for n in missing)
        raise MissingSecret(
            f"block {block} needs the secret{'s' if len(missing) > 1 else ''} {', '.join(missing)}: "
            f"run {cmds}, or set the environment variable{'s' if len(missing) > 1 else ''}"
        )
    return out


FRAGMENT = 10  # a run of this many characters of a secret is a leak of it too (for secrets longer than this)


@functools.lru_cache(maxsize=64)
def secret_forms(secret: str) -> tuple[str, ...]:
    """The ways a secret's value shows up in text a block writes: as it is, JSON-escaped,
    URL-encoded and base64-encoded (standard and URL-safe, padded or not)."""
    raw = secret.encode("utf-8", "surrogatepass")
    b64 = base64.b64encode(raw).decode()
    url64 = base64.urlsafe_b64encode(raw).decode()
    forms = {secret, json.dumps(secret)[1:-1], urllib.parse.quote(secret, safe=""), urllib.parse.quote_plus(secret),
             b64, b64.rstrip("="), url64, url64.rstrip("=")}
    return tuple(sorted((f for f in forms if len(f) >= 4), key=len, reverse=True))


def redact(text: str, secrets: Iterable[str]) -> str:
    """Replace every secret value in ``text`` with ``***``: whole, in any of its
    :func:`secret_forms`, and any run of FRAGMENT or more of its characters."""
    values = {s for s in secrets if s and len(s) >= 4}
    if not values:
        return text
    for s in sorted({f for v in values for f in secret_forms(v)}, key=len, reverse=True):
        text = text.replace(s, "***")
    for v in sorted(values, key=len, reverse=True):
        if len(v) > FRAGMENT:
            text = _redact_fragments(text, v)
    return text


def _redact_fragments(text: str, secret: str) -> str:
    """``text`` with every run of at least FRAGMENT characters of ``secret`` replaced."""
    spans: list[list[int]] = []  # where pieces of the secret occur, merged where they touch
    for a in sorted(at for i in range(len(secret) - FRAGMENT + 1) for at in _find_all(text, secret[i : i + FRAGMENT])):
        if spans and a <= spans[-1][1]:
            spans[-1][1] = max(spans[-1][1], a + FRAGMENT)
        else:
            spans.append([a, a + FRAGMENT])
    pieces, pos = [], 0
    for a, b in spans:
        pieces += [text[pos:a], "***"]
        pos = b
    return "".join(pieces) + text[pos:]


def _find_all(text: str, piece: str) -> Iterator[int]:
    at = text.find(piece)
    while at != -1:
        yield at
        at = text.find(piece, at + 1)
