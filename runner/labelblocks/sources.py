"""Where ``labelblocks sync`` reads from: a folder on this machine, or any fsspec location
(``s3://bucket/prefix``, ``gs://...``), listed in pages so that a bucket of a million objects
never sits in memory at once.

Each object has a URL (the sample's ``source`` metadata: the file's absolute path, or the
object's full URL), a *stamp* that changes when the object does (a file's size and
modification time; an object's ETag) and, for an object store, its ETag. A file's version is
its content hash, known once it is read.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import InvalidInput
from .media import SUPPORTED

PAGE = 1000  # objects per page of a listing
_URL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")


@dataclass(frozen=True)
class SourceObject:
    """One object of a source: where it is below the source (``key``, '/'-separated), its URL,
    size, stamp, and the object store's ETag (None for a file)."""

    key: str
    url: str
    size: int
    stamp: str
    etag: str | None = None

    @property
    def name(self) -> str:
        return self.key.rsplit("/", 1)[-1]

    @property
    def folder(self) -> str | None:
        """The name of the folder the object is in below the source (None at its top)."""
        parts = self.key.split("/")
        return parts[-2] if len(parts) > 1 else None


def wanted(name: str) -> bool:
    """Whether a file of this name is a sample to sync: media and not hidden (the protocol's
    companion files, ``*.labels``, are not media)."""
    return not name.startswith(".") and os.path.splitext(name)[1].lower() in SUPPORTED


class Source:
    """A folder or an fsspec location: its objects in pages, and their bytes."""

    url: str  # the normalised location: an absolute folder path, or the URL without a trailing '/'
    ignored: int  # files listed so far that are not media (or are hidden or companion files)

    @property
    def prefix(self) -> str:
        """What every object URL of this source starts with."""
        return self.url.rstrip("/") + "/"

    def pages(self, size: int = PAGE) -> Iterator[list[SourceObject]]:
        raise NotImplementedError

    def read(self, objects: list[SourceObject]) -> list[bytes | OSError]:
        """The bytes of each object, or the error reading it."""
        raise NotImplementedError


class FolderSource(Source):
    """A folder on this machine, walked in sorted order (symbolic links to folders not followed)."""

    def __init__(self, folder: Path) -> None:
        if not folder.is_dir():
            raise InvalidInput(f"{folder}: no such folder" if not folder.exists() else f"{folder}: not a folder")
        self.root = folder.resolve()
        self.url = str(self.root)
        self.ignored = 0

    def pages(self, size: int = PAGE) -> Iterator[list[SourceObject]]:
        page: list[SourceObject] = []
        for obj in self._walk(self.root, ""):
            page.append(obj)
            if len(page) >= size:
                yield page
                page = []
        if page:
            yield page

    def _walk(self, folder: Path, below: str) -> Iterator[SourceObject]:
        try:
            with os.scandir(folder) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as e:
            raise InvalidInput(f"{folder}: cannot read the folder: {e.strerror or e}") from None
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                if not entry.name.startswith("."):
                    yield from self._walk(Path(entry.path), f"{below}{entry.name}/")
                continue
            if not wanted(entry.name) or not entry.is_file():
                self.ignored += 1
                continue
            try:
                st = entry.stat()
            except OSError:  # gone since the folder was read
                continue
            yield SourceObject(f"{below}{entry.name}", entry.path, st.st_size, f"{st.st_size}:{st.st_mtime_ns}")

    def read(self, objects: list[SourceObject]) -> list[bytes | OSError]:
        out: list[bytes | OSError] = []
        for o in objects:
            try:
                out.append(Path(o.url).read_bytes())
            except OSError as e:
                out.append(e)
        return out


class FsspecSource(Source):
    """Any fsspec location. S3 is listed with the object store's own pages; other file
    systems a folder at a time."""

    def __init__(self, url: str) -> None:
        import fsspec

        try:
            self.fs, root = fsspec.core.url_to_fs(url)
        except (ImportError, ValueError) as e:
            raise InvalidInput(f"{url}: {e}") from None
        self.root = root.rstrip("/")
        self.url = url.rstrip("/")
        self.ignored = 0
        try:
            if not self.fs.isdir(self.root):
                raise InvalidInput(f"{url}: no such folder or bucket prefix")
        except (OSError, PermissionError) as e:
            raise InvalidInput(f"{url}: cannot list it: {e}") from None

    def _object(self, info: dict[str, Any]) -> SourceObject | None:
        path = str(info["name"]).rstrip("/")
        key = path[len(self.root) + 1:] if path.startswith(self.root + "/") else path
        if info.get("type") == "directory" or not wanted(key.rsplit("/", 1)[-1]):
            if info.get("type") != "directory":
                self.ignored += 1
            return None
        if any(part.startswith(".") for part in key.split("/")[:-1]):
            return None
        etag = str(info.get("ETag") or info.get("etag") or info.get("md5Hash") or "").strip('"') or None
        size = int(info.get("size") or 0)
        stamp = etag or f"{size}:{info.get('mtime') or info.get('LastModified') or info.get('updated') or ''}"
        return SourceObject(key, f"{self.url}/{key}", size, stamp, etag)

    def pages(self, size: int = PAGE) -> Iterator[list[SourceObject]]:
        for infos in self._listing(size):
            page = [o for o in map(self._object, infos) if o is not None]
            if page:
                yield page

    def _listing(self, size: int) -> Iterator[list[dict[str, Any]]]:
        if hasattr(self.fs, "_iterdir") and getattr(self.fs, "protocol", None) in ("s3", ("s3", "s3a")):
            yield from self._s3_pages(size)
            return
        for _folder, _dirs, files in self.fs.walk(self.root, detail=True):
            infos = [files[k] for k in sorted(files)]
            for i in range(0, len(infos), size):
                yield infos[i:i + size]

    def _s3_pages(self, size: int) -> Iterator[list[dict[str, Any]]]:
        """The object store's listing pages (keys in order), ``size`` objects at a time."""
        from fsspec.asyn import sync

        bucket, _, prefix = self.root.partition("/")
        listing = self.fs._iterdir(bucket, delimiter="", prefix=f"{prefix}/" if prefix else "")

        async def take() -> list[dict[str, Any]]:
            out: list[dict[str, Any]] = []
            async for info in listing:
                out.append(info)
                if len(out) >= size:
                    break
            return out

        while page := sync(self.fs.loop, take):
            yield page

    def read(self, objects: list[SourceObject]) -> list[bytes | OSError]:
        paths = [f"{self.root}/{o.key}" for o in objects]
        got = self.fs.cat(paths, on_error="return")
        out: list[bytes | OSError] = []
        for p in paths:
            v = got.get(p)
            out.append(v if isinstance(v, bytes) else OSError(f"cannot read {p}: {v}"))
        return out


def open_source(location: str, opener: Callable[[str], Source] | None = None) -> Source:
    """The source at ``location``: a URL with a scheme goes to fsspec, anything else is a folder."""
    if opener is not None:
        return opener(location)
    if _URL.match(location) and not location.startswith("file://"):
        if "@" in location.split("://", 1)[1].split("/", 1)[0]:
            raise InvalidInput(f"{location.split('@')[-1]}: put credentials in the environment "
                               "(AWS_ACCESS_KEY_ID, ...), not in the URL")
        return FsspecSource(location)
    return FolderSource(Path(location.removeprefix("file://")).expanduser())
