"""Content-addressed blob files beside the database: ``blobs/ab/abcdef...``.

Durability: a blob is written to a temporary name and renamed; :meth:`BlobStore.sync` makes
the written blobs and their folder entries durable, and is called before the database row
that references them commits (a crash never leaves a row pointing at a blob that is lost).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import itertools
import os
import re
import sys
import threading
from collections.abc import Iterable, Iterator
from functools import cache
from pathlib import Path

from ..errors import InvalidInput

_HASH = re.compile(r"^[0-9a-f]{64}$")


class BlobStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        self._dirs: set[str] = set()
        self._counter = itertools.count()

    def create_shards(self) -> None:
        """Create the 256 shard folders up front (a new project): creating a folder costs far
        more than a file on many file systems, and would otherwise land inside the first upload."""
        for i in range(256):
            (self.root / f"{i:02x}").mkdir(parents=True, exist_ok=True)
            self._dirs.add(f"{i:02x}")

    def path(self, content_hash: str) -> Path:
        # the hash is validated so that no name can escape the blob folder
        if not _HASH.match(content_hash):
            raise InvalidInput(f"expected a sha256 hex digest as blob name, got {content_hash!r}")
        return self.root / content_hash[:2] / content_hash

    def exists(self, content_hash: str) -> bool:
        return self.path(content_hash).exists()

    def put(self, content_hash: str, data: bytes) -> Path:
        """Write ``data`` under its hash atomically (temporary file + rename); idempotent."""
        dest = self.path(content_hash)
        if dest.exists():
            # a fresh time: `labelblocks gc` spares young blobs, and this one is about to be used
            os.utime(dest)
            return dest
        sub = content_hash[:2]
        if sub not in self._dirs:
            dest.parent.mkdir(parents=True, exist_ok=True)
            self._dirs.add(sub)
        # a temporary name unique to this process, thread and call; O_EXCL never clobbers
        tmp = dest.parent / f".tmp-{os.getpid()}-{threading.get_ident()}-{next(self._counter)}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, dest)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return dest

    def files(self) -> Iterator[tuple[str | None, Path, os.stat_result]]:
        """Every file in the blob folder: (its hash, or None for a leftover temporary file of
        an interrupted write), its path and its stat."""
        if not self.root.is_dir():
            return
        for shard in sorted(os.scandir(self.root), key=lambda e: e.name):
            if not shard.is_dir(follow_symlinks=False):
                continue
            for entry in os.scandir(shard.path):
                if entry.is_file(follow_symlinks=False):
                    name = entry.name
                    yield (name if _HASH.match(name) else None), Path(entry.path), entry.stat(follow_symlinks=False)

    def read(self, content_hash: str) -> bytes:
        return self.path(content_hash).read_bytes()

    def remove(self, content_hash: str) -> None:
        self.path(content_hash).unlink(missing_ok=True)

    def sync(self, content_hashes: Iterable[str]) -> None:
        """Make the blobs ``content_hashes`` and their folder entries durable. On Linux one
        ``syncfs`` of the blob folder's file system (one journal commit for a whole batch);
        elsewhere an fsync of each file and of each folder holding one."""
        hashes = list(content_hashes)
        if not hashes:
            return
        syncfs = _syncfs()
        if syncfs is not None:
            fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY)
            try:
                if syncfs(fd) == 0:
                    return
            finally:
                os.close(fd)
        for h in hashes:
            _fsync(self.path(h), os.O_RDONLY)
        for folder in {self.path(h).parent for h in hashes}:
            _fsync(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))


def _fsync(path: Path, flags: int) -> None:
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@cache
def _syncfs() -> ctypes._CFuncPtr | None:  # type: ignore[name-defined]
    """libc's syncfs(2) (Linux), or None."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        fn = libc.syncfs
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int]
    fn.restype = ctypes.c_int
    return fn  # type: ignore[no-any-return]
