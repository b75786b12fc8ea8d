"""Content-addressed blob files beside the database: ``blobs/ab/abcdef...``."""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

from ..errors import InvalidInput

_HASH = re.compile(r"^[0-9a-f]{64}$")


class BlobStore:
    def __init__(self, root: Path) -> None:
        self.root = root

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
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, dest)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return dest

    def read(self, content_hash: str) -> bytes:
        return self.path(content_hash).read_bytes()

    def remove(self, content_hash: str) -> None:
        self.path(content_hash).unlink(missing_ok=True)
