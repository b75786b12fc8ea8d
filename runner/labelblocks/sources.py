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


@dataclass(slots=True)
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


def _key(o: SourceObject) -> str:
    return o.key


def wanted(name: str) -> bool:
    """Whether a file of this name is a sample to sync: media and not hidden (the protocol's
    companion files, ``*.labels``, are not media)."""
    dot = name.rfind(".")
    return dot > 0 and not name.startswith(".") and name[dot:].lower() in SUPPORTED


class Source:
    """A folder or an fsspec location: its objects in pages, and their bytes."""

    url: str  # the normalised location: an absolute folder path, or the URL without a trailing '/'
    ignored: int = 0  # files listed so far that are not media (or are hidden or companion files)
    unchanged: int = 0  # objects listed so far that ``known`` had with the same stamp

    @property
    def prefix(self) -> str:
        """What every object URL of this source starts with."""
        return self.url.rstrip("/") + "/"

    def pages(self, size: int = PAGE, known: dict[str, tuple[int, str]] | None = None) -> Iterator[list[SourceObject]]:
        """The objects, a page per ``size`` listed. An object whose URL ``known`` maps to
        (anything, its stamp) is unchanged: it is removed from ``known``, counted, and not
        yielded (a page may then be short, or empty: progress still shows)."""
        raise NotImplementedError

    def read(self, objects: list[SourceObject]) -> list[bytes | OSError]:
        """The bytes of each object, or the error reading it."""
        raise NotImplementedError


class FolderSource(Source):
    """A folder on this machine, walked folder by folder in the file system's order (symbolic
    links to folders not followed)."""

    def __init__(self, folder: Path) -> None:
        if not folder.is_dir():
            raise InvalidInput(f"{folder}: no such folder" if not folder.exists() else f"{folder}: not a folder")
        self.root = folder.resolve()
        self.url = str(self.root)

    def pages(self, size: int = PAGE, known: dict[str, tuple[int, str]] | None = None) -> Iterator[list[SourceObject]]:
        known = known if known is not None else {}
        page: list[SourceObject] = []
        listed = same = 0
        stack: list[tuple[str, str]] = [(str(self.root), "")]  # (folder, its key prefix), depth first
        media = SUPPORTED
        while stack:
            folder, below = stack.pop()
            try:
                with os.scandir(folder) as it:
                    entries = list(it)
            except OSError as e:
                raise InvalidInput(f"{folder}: cannot read the folder: {e.strerror or e}") from None
            subfolders: list[tuple[str, str]] = []
            for entry in entries:  # this loop is a re-sync's cost: wanted() and the rest inline
                name = entry.name
                dot = name.rfind(".")
                if dot > 0 and name[0] != "." and name[dot:].lower() in media and entry.is_file():
                    try:
                        st = entry.stat()
                    except OSError:  # gone since the folder was read
                        continue
                    path, stamp = entry.path, f"{st.st_size}:{st.st_mtime_ns}"
                    k = known.get(path)
                    if k is not None and k[1] == stamp:
                        del known[path]
                        same += 1
                    else:
                        page.append(SourceObject(below + name, path, st.st_size, stamp))
                    listed += 1
                    if listed >= size:
                        self.unchanged += same
                        page.sort(key=_key)
                        yield page
                        page, listed, same = [], 0, 0
                elif entry.is_dir(follow_symlinks=False):
                    if name[0] != ".":
                        subfolders.append((entry.path, f"{below}{name}/"))
                else:
                    self.ignored += 1
            stack.extend(sorted(subfolders, reverse=True))
        self.unchanged += same
        if page or listed:
            page.sort(key=_key)
            yield page

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
            # a new instance: fsspec's cached one may hold settings the environment no longer has
            self.fs, root = fsspec.core.url_to_fs(url, skip_instance_cache=True)
        except (ImportError, ValueError) as e:
            raise InvalidInput(f"{url}: {e}") from None
        self.root = root.rstrip("/")
        self.url = url.rstrip("/")
        try:
            found = self.fs.isdir(self.root)
        except Exception as e:  # the storage library's own errors (botocore's, aiohttp's): one line
            raise InvalidInput(f"{url}: cannot list it: {e}") from None
        if not found:
            raise InvalidInput(f"{url}: no such folder or bucket prefix")

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

    def pages(self, size: int = PAGE, known: dict[str, tuple[int, str]] | None = None) -> Iterator[list[SourceObject]]:
        known = known if known is not None else {}
        for infos in self._listing(size):
            page = []
            for o in map(self._object, infos):
                if o is None:
                    continue
                k = known.get(o.url)
                if k is not None and k[1] == o.stamp:
                    del known[o.url]
                    self.unchanged += 1
                else:
                    page.append(o)
            yield page

    def _listing(self, size: int) -> Iterator[list[dict[str, Any]]]:
        try:
            yield from self._pages_of_infos(size)
        except Exception as e:  # the storage library's own errors: one line
            raise InvalidInput(f"{self.url}: cannot list it: {e}") from None

    def _pages_of_infos(self, size: int) -> Iterator[list[dict[str, Any]]]:
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
