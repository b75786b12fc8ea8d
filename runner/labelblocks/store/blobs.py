"""Content-addressed blobs: ``ab/abcdef...`` in the project's blob folder (the default), or
in any fsspec location (``s3://bucket/prefix``, ``gs://...``, a shared folder) chosen per
project (:func:`open_blob_store`).

Durability: a blob is written to a temporary name and renamed (an object store's put is
atomic); :meth:`BlobStore.sync` makes the written blobs and their folder entries durable, and
is called before the database row that references them commits (a crash never leaves a row
pointing at a blob that is lost).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import hashlib
import itertools
import os
import re
import sys
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from ..errors import InvalidInput

_HASH = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class StoredFile:
    """A file in a blob store: its hash (None for a leftover temporary file), where it is,
    its size and when it was written."""

    hash: str | None
    location: str
    size: int
    mtime: float


class BlobStore:
    """The blob folder on this machine."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.location = str(root)
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

    def files(self) -> Iterator[StoredFile]:
        """Every file in the blob folder (temporary files of interrupted writes too)."""
        if not self.root.is_dir():
            return
        for shard in sorted(os.scandir(self.root), key=lambda e: e.name):
            if not shard.is_dir(follow_symlinks=False):
                continue
            for entry in os.scandir(shard.path):
                if entry.is_file(follow_symlinks=False):
                    st = entry.stat(follow_symlinks=False)
                    yield StoredFile(entry.name if _HASH.match(entry.name) else None, entry.path, st.st_size,
                                     st.st_mtime)

    def delete(self, location: str) -> None:
        """Remove a file :meth:`files` listed."""
        Path(location).unlink(missing_ok=True)

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


class RemoteBlobStore:
    """Blobs in an fsspec location (``s3://bucket/prefix``, ``gs://...``, ``memory://...``):
    objects ``PREFIX/ab/abcdef...``, each put whole (an object store's put is atomic), read
    through a cache folder on this machine (a blob never changes, so a cached copy is always
    right; one fetched is checked against its hash before it is kept)."""

    def __init__(self, url: str, cache: Path, **options: Any) -> None:
        import fsspec

        self.location = url.rstrip("/")
        try:
            # a new instance: fsspec's cached one may hold settings (an endpoint, keys) the
            # environment no longer has
            self.fs, self.base = fsspec.core.url_to_fs(self.location, skip_instance_cache=True, **options)
        except (ImportError, ValueError) as e:
            raise InvalidInput(f"blob storage {url}: {e} (for s3:// install s3fs: pip install labelblocks[s3])") from None
        self.cache = BlobStore(cache)

    def _key(self, content_hash: str) -> str:
        self.cache.path(content_hash)  # validates the name
        return f"{self.base}/{content_hash[:2]}/{content_hash}"

    def create_shards(self) -> None:
        self.cache.root.mkdir(parents=True, exist_ok=True)

    def exists(self, content_hash: str) -> bool:
        return bool(self.fs.exists(self._key(content_hash)))

    def put(self, content_hash: str, data: bytes) -> Path:
        """Store ``data`` under its hash (unless there already); idempotent."""
        key = self._key(content_hash)
        if not self.fs.exists(key):
            self.fs.pipe_file(key, data)
        return self.cache.put(content_hash, data)

    def path(self, content_hash: str) -> Path:
        """A file on this machine holding the blob (fetched into the cache when missing)."""
        local = self.cache.path(content_hash)
        if local.exists():
            return local
        try:
            data = self.fs.cat_file(self._key(content_hash))
        except FileNotFoundError:
            return local  # as a missing local blob: the caller's open fails with the path
        if hashlib.sha256(data).hexdigest() != content_hash:
            raise InvalidInput(f"the stored object {self._key(content_hash)} no longer matches its hash: "
                               "it was changed in the bucket")
        return self.cache.put(content_hash, data)

    def read(self, content_hash: str) -> bytes:
        return self.path(content_hash).read_bytes()

    def remove(self, content_hash: str) -> None:
        try:
            self.fs.rm_file(self._key(content_hash))
        except FileNotFoundError:
            pass
        self.cache.remove(content_hash)

    def files(self) -> Iterator[StoredFile]:
        """Every object under the prefix."""
        if not self.fs.exists(self.base):
            return
        for key, info in self.fs.find(self.base, detail=True).items():
            name = key.rsplit("/", 1)[-1]
            modified = info.get("LastModified") or info.get("mtime") or info.get("created") or 0
            mtime = modified.timestamp() if hasattr(modified, "timestamp") else float(modified)
            yield StoredFile(name if _HASH.match(name) else None, key, int(info.get("size") or 0), mtime)

    def delete(self, location: str) -> None:
        try:
            self.fs.rm_file(location)
        except FileNotFoundError:
            pass

    def sync(self, content_hashes: Iterable[str]) -> None:
        """Nothing to do: an object store's put is durable when it returns."""


def open_blob_store(location: str, cache: Path) -> BlobStore | RemoteBlobStore:
    """The blob store at ``location``: a folder, or an fsspec URL (``cache`` holds local copies)."""
    if "://" in location and not location.startswith("file://"):
        return RemoteBlobStore(location, cache)
    return BlobStore(Path(location.removeprefix("file://")))
