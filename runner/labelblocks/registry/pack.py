"""Packing a block folder for a push, and reading a pushed archive back safely.

A push packs the folder as a reproducible tar.gz (sorted, no times or owners, so that an
unchanged folder packs to the same sha256). Left out: ``.git``, what the folder's ignore
files (``.labelblocksignore``, ``.dockerignore``, ``.gitignore``) match, and anything that
looks like a credential file. An archive is checked before anything of it is kept: no path
may leave its root (``..``, absolute, a link pointing out), no device or pipe, and its
members may not add up to more than :data:`MAX_UNPACKED` (a decompression bomb stops there).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import posixpath
import shutil
import tarfile
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pathspec

from ..errors import InvalidInput
from ..external_blocks import dockerfile_command
from ..parameters import ParametersFile, load_parameters
from ..secrets import redact

IGNORE_FILES = (".labelblocksignore", ".dockerignore", ".gitignore")
ALWAYS_LEFT_OUT = (".git/", ".labelblocks-block.json", "__pycache__/", ".DS_Store")
# files that hold credentials by their nature: never packed, whatever the ignore files say
CREDENTIALS = (".env", ".env.*", "*.pem", "*.key", "*.p12", "*.pfx", "id_rsa*", "id_dsa*", "id_ecdsa*",
               "id_ed25519*", ".netrc", ".npmrc", ".pypirc", "credentials.json")
MAX_MEMBERS = 20_000
MAX_UNPACKED = 512 * 1024 * 1024  # bytes, all members together
MAX_ARCHIVE = 256 * 1024 * 1024  # bytes, the compressed archive


@dataclass
class Packed:
    """A packed block folder: the archive (a temporary file the caller removes), its sha256
    and size, what went in and which credential files were left out."""

    path: Path
    sha256: str
    size: int
    files: list[str]
    credentials_left_out: list[str]


def _spec(lines: Iterable[str]) -> pathspec.PathSpec:
    return pathspec.GitIgnoreSpec.from_lines(lines)


def pack_folder(folder: Path, secret_values: Iterable[str] = ()) -> Packed:
    """Pack ``folder`` (which must hold a valid parameters.json) for a push. Refuses when the
    parameters.json holds one of ``secret_values``, or a secret parameter with a value."""
    folder = folder.resolve()
    params_file = folder / "parameters.json"
    if not params_file.is_file():
        raise InvalidInput(f"{folder} has no parameters.json: a block folder needs one (see `labelblocks blocks init`)")
    spec = load_parameters(params_file)
    check_no_secret_values(params_file.read_text(encoding="utf-8"), spec, secret_values)
    patterns: list[str] = list(ALWAYS_LEFT_OUT)
    for name in IGNORE_FILES:
        f = folder / name
        if f.is_file():
            patterns += f.read_text(encoding="utf-8", errors="replace").splitlines()
    ignored, creds = _spec(patterns), _spec(CREDENTIALS)
    files: list[str] = []
    left_out: list[str] = []
    for root, dirs, names in os.walk(folder):
        rel_root = Path(root).relative_to(folder).as_posix()
        rel_root = "" if rel_root == "." else rel_root + "/"
        dirs[:] = sorted(d for d in dirs if not ignored.match_file(rel_root + d + "/"))
        for n in sorted(names):
            rel = rel_root + n
            if creds.match_file(rel):
                left_out.append(rel)
            elif not ignored.match_file(rel):
                files.append(rel)
    fd, tmp = tempfile.mkstemp(suffix=".tar.gz", prefix="labelblocks-push-")
    try:
        with os.fdopen(fd, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as gz, \
                tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for rel in files:
                _add(tar, folder / rel, rel)
        data_hash, size = file_sha256(Path(tmp))
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    if size > MAX_ARCHIVE:
        Path(tmp).unlink(missing_ok=True)
        raise InvalidInput(f"the packed block is {size / 2**20:.0f} MiB, over the {MAX_ARCHIVE // 2**20} MiB limit: "
                           "leave data, models and build output out with a .labelblocksignore")
    return Packed(Path(tmp), data_hash, size, files, left_out)


def _add(tar: tarfile.TarFile, path: Path, rel: str) -> None:
    info = tar.gettarinfo(str(path), arcname=rel)
    info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
    if info.isreg():
        info.mode = 0o755 if os.access(path, os.X_OK) else 0o644
        with path.open("rb") as f:
            tar.addfile(info, f)
    elif info.issym():
        tar.addfile(info)


def check_no_secret_values(text: str, spec: ParametersFile, secret_values: Iterable[str]) -> None:
    """Refuse a parameters.json that holds a secret: a secret parameter with a default value,
    or any of ``secret_values`` (stored secrets, the values given for the push)."""
    for p in spec.parameters:
        if p.type == "secret" and p.value not in (None, ""):
            raise InvalidInput(f"parameters.json: the secret parameter {p.param!r} has a value: remove it (secrets "
                               "reach a block as environment variables, set with the organization)")
    if redact(text, [v for v in secret_values if v]) != text:
        raise InvalidInput("parameters.json holds the value of a secret: remove it before pushing "
                           "(secrets reach a block as environment variables, never through parameters.json)")


def file_sha256(path: Path) -> tuple[str, int]:
    h = hashlib.sha256()
    size = 0
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
            size += len(chunk)
    return h.hexdigest(), size


# --- reading an archive back ---------------------------------------------------------------------


def _check_member(m: tarfile.TarInfo) -> str:
    name = m.name
    norm = posixpath.normpath(name)
    if name.startswith("/") or (len(name) > 1 and name[1] == ":") or norm == ".." or norm.startswith("../"):
        raise InvalidInput(f"the archive's entry {name!r} points outside the block's folder")
    if m.issym() or m.islnk():
        target = m.linkname
        where = posixpath.normpath(posixpath.join(posixpath.dirname(norm), target)) if m.issym() else \
            posixpath.normpath(target)
        if target.startswith("/") or where == ".." or where.startswith("../"):
            raise InvalidInput(f"the archive's link {name!r} -> {target!r} points outside the block's folder")
    elif not (m.isreg() or m.isdir()):
        raise InvalidInput(f"the archive's entry {name!r} is not a file or folder (a device or pipe)")
    return norm


def read_archive(path: Path) -> tuple[ParametersFile, dict[str, Any], list[str]]:
    """Check a block archive and read its parameters.json: (validated spec, the document as
    JSON, the command its Dockerfile runs). Raises InvalidInput naming what is wrong."""
    total = 0
    params: bytes | None = None
    dockerfile: bytes | None = None
    try:
        with tarfile.open(path, mode="r:gz") as tar:
            for n, m in enumerate(tar):
                if n >= MAX_MEMBERS:
                    raise InvalidInput(f"the archive holds more than {MAX_MEMBERS} entries")
                norm = _check_member(m)
                total += max(m.size, 0)
                if total > MAX_UNPACKED:
                    raise InvalidInput(f"the archive unpacks to more than {MAX_UNPACKED // 2**20} MiB (refused as a "
                                       "possible decompression bomb)")
                if m.isreg() and norm in ("parameters.json", "Dockerfile"):
                    f = tar.extractfile(m)
                    data = f.read(4 * 2**20 + 1) if f else b""
                    if norm == "parameters.json":
                        params = data
                    else:
                        dockerfile = data
    except (tarfile.TarError, OSError, EOFError, gzip.BadGzipFile) as e:
        raise InvalidInput(f"the archive cannot be read as tar.gz: {e}") from None
    if params is None:
        raise InvalidInput("the archive has no parameters.json at its root")
    try:
        doc = json.loads(params)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InvalidInput(f"parameters.json is not valid JSON: {e}") from None
    spec = load_parameters(doc, "parameters.json")
    command: list[str] = []
    if dockerfile is not None:
        with tempfile.TemporaryDirectory() as d:
            (Path(d) / "Dockerfile").write_bytes(dockerfile)
            command = dockerfile_command(Path(d) / "Dockerfile") or []
    return spec, spec.model_dump(by_alias=True, exclude_none=True), command


def unpack(path: Path, dest: Path) -> None:
    """Unpack a checked archive into the new folder ``dest`` (atomically: a half-unpacked
    folder never stands at ``dest``)."""
    read_archive(path)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}-", dir=dest.parent))
    try:
        with tarfile.open(path, mode="r:gz") as tar:
            tar.extractall(tmp, filter="data")
        os.replace(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise

