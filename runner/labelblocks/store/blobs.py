"""Content-addressed blob files beside the database: ``blobs/ab/abcdef...``."""

from __future__ import annotations

import itertools
import os
import re
import threading
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

    def read(self, content_hash: str) -> bytes:
        return self.path(content_hash).read_bytes()

    def remove(self, content_hash: str) -> None:
        self.path(content_hash).unlink(missing_ok=True)
