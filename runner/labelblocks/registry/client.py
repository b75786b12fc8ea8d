"""Talking to an organization over HTTP: listing its blocks, pushing (upload link, upload in
chunks that a broken connection resumes, finalize), downloading a version with its sha256
checked, attaching a project and receiving a block's sealed secrets."""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import requests

from ..errors import InvalidInput, NotFound
from .org import CHUNK
from .pack import Packed, file_sha256

URL_ENV = "LABELBLOCKS_ORG_URL"
KEY_ENV = "LABELBLOCKS_ORG_KEY"
RETRIES = 5  # a chunk's upload is retried this often (asking what arrived first) before a push gives up


class Unreachable(InvalidInput):
    """The organization's server did not answer."""


class Refused(InvalidInput):
    """The organization answered with an error (``status``: its HTTP status)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def base_url(url: str) -> str:
    """The organization's API base (``.../v1``) from what a user typed."""
    u = url.strip().rstrip("/")
    if not u.startswith(("http://", "https://")):
        raise InvalidInput(f"organization URL {url!r}: expected http://HOST:PORT")
    return u if u.endswith("/v1") else u + "/v1"


class OrgClient:
    """An organization's API at ``url`` with a member's ``key``."""

    def __init__(self, url: str, key: str, timeout: float = 30.0) -> None:
        if not key:
            raise InvalidInput(f"no organization key: pass --key, or set {KEY_ENV}")
        self.url = base_url(url)
        self.display = self.url[: -len("/v1")]
        self.timeout = timeout
        self._session = requests.Session()
        self._session.headers["x-api-key"] = key
        self._org_id: int | None = None

    def _call(self, method: str, path: str, **kw: Any) -> Any:
        try:
            r = self._session.request(method, self.url + path, timeout=kw.pop("timeout", self.timeout), **kw)
        except requests.RequestException as e:
            raise Unreachable(f"cannot reach the organization at {self.display}: {type(e).__name__}") from None
        if kw.get("stream"):
            if r.ok:
                return r
            r.content  # noqa: B018 - read the error body
        try:
            data = r.json()
        except ValueError:
            raise Refused(r.status_code, f"the organization at {self.display} answered HTTP {r.status_code} "
                                         "without JSON: is that URL a labelblocks organization?") from None
        if not r.ok or not isinstance(data, dict) or data.get("success") is False:
            message = data.get("error") if isinstance(data, dict) else None
            if r.status_code == 404:
                raise NotFound(str(message or f"not found: {path}"))
            raise Refused(r.status_code, f"the organization refused: {message or f'HTTP {r.status_code}'}")
        return data

    # --- the organization --------------------------------------------------------------------

    def organization(self) -> dict[str, Any]:
        """{id, name, ...} of the organization this key belongs to."""
        orgs = self._call("GET", "/api/organizations").get("organizations") or []
        if not orgs:
            raise InvalidInput(f"{self.display} holds no organization")
        self._org_id = int(orgs[0]["id"])
        return dict(orgs[0])

    @property
    def prefix(self) -> str:
        if self._org_id is None:
            self.organization()
        return f"/api/organizations/{self._org_id}"

    def blocks(self) -> list[dict[str, Any]]:
        return list(self._call("GET", f"{self.prefix}/transformation")["transformationBlocks"])

    def block(self, name: str) -> dict[str, Any]:
        """A block by name (or id)."""
        for b in self.blocks():
            if b["name"] == name or str(b["id"]) == name:
                return b
        raise NotFound(f"the organization at {self.display} has no block {name!r}: see `labelblocks blocks list`")

    def remove(self, block_id: int) -> None:
        self._call("DELETE", f"{self.prefix}/transformation/{block_id}")

    def secret_names(self, block_id: int) -> list[str]:
        return list(self._call("GET", f"{self.prefix}/transformation/{block_id}/secrets")["secrets"])

    def set_secret(self, block_id: int, name: str, value: str) -> None:
        self._call("PUT", f"{self.prefix}/transformation/{block_id}/secrets/{name}", json={"value": value})

    def attach(self, project_name: str) -> dict[str, Any]:
        return dict(self._call("POST", f"{self.prefix}/attach", json={"projectName": project_name}))

    def sealed_environment(self, block_id: int, attachment_id: int) -> str:
        data = self._call("POST", f"{self.prefix}/transformation/{block_id}/environment",
                          json={"attachmentId": attachment_id}, timeout=10)
        return str(data["sealed"])

    # --- pushing -------------------------------------------------------------------------------

    def push(self, packed: Packed, name: str, block_id: int | None, env: Mapping[str, str],
             on_progress: Callable[[int, int], None] | None = None,
             on_log: Callable[[str], None] | None = None) -> dict[str, Any]:
        """Upload ``packed`` in chunks (a failed chunk is retried from what the server has)
        and finalize it as the next version of ``name``; the build's log streams to ``on_log``."""
        up = self._call("POST", f"{self.prefix}/uploads", json={"name": name, "sha256": packed.sha256,
                                                                 "size": packed.size})
        uid, chunk = up["uploadId"], int(up.get("chunkSize") or CHUNK)
        sent = int(up.get("received") or 0)
        failures = 0
        with packed.path.open("rb") as f:
            while sent < packed.size:
                f.seek(sent)
                data = f.read(chunk)
                try:
                    sent = int(self._call("PUT", f"{self.prefix}/uploads/{uid}", params={"offset": sent}, data=data,
                                          headers={"content-type": "application/octet-stream"})["received"])
                    failures = 0
                except (Unreachable, Refused) as e:
                    failures += 1
                    if failures > RETRIES:
                        raise
                    if isinstance(e, Refused) and e.status not in (400, 409, 500, 502, 503, 504):
                        raise
                    time.sleep(min(0.2 * 2**failures, 5))
                    sent = int(self._call("GET", f"{self.prefix}/uploads/{uid}")["received"])
                if on_progress:
                    on_progress(sent, packed.size)
        r = self._call("POST", f"{self.prefix}/uploads/{uid}/finalize", json={"blockId": block_id, "env": dict(env)},
                       headers={"accept": "application/x-ndjson"}, stream=True, timeout=(self.timeout, 3600))
        for raw in r.iter_lines():
            item = json.loads(raw) if raw else {}
            if "log" in item:
                if on_log:
                    on_log(str(item["log"]))
            elif item.get("success") is False:
                raise Refused(400, f"the organization refused: {item.get('error')}")
            elif item.get("success"):
                return dict(item)
        raise Unreachable(f"the organization at {self.display} closed the push before answering: push again")

    # --- downloading ---------------------------------------------------------------------------

    def download(self, block_id: int, version: int, sha256: str, dest_dir: Path) -> Path:
        """Download a version's archive into ``dest_dir``; its sha256 must be ``sha256``."""
        r = self._call("GET", f"{self.prefix}/transformation/{block_id}/versions/{version}/download", stream=True)
        dest_dir.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(suffix=".tar.gz", dir=dest_dir, prefix=".download-")
        try:
            with os.fdopen(fd, "wb") as f:
                for piece in r.iter_content(1 << 20):
                    f.write(piece)
            got, _ = file_sha256(Path(tmp))
            if got != sha256:
                raise InvalidInput(f"the downloaded archive of block {block_id} version {version} hashes to {got}, "
                                   f"not the {sha256} the organization recorded: refused")
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return Path(tmp)


def read_identity(folder: Path) -> dict[str, Any] | None:
    """The folder's ``.labelblocks-block.json`` (which block of which organization it pushes to)."""
    f = folder / ".labelblocks-block.json"
    if not f.exists():
        return None
    try:
        data = json.loads(f.read_text(encoding="utf-8"))
        if not isinstance(data, dict) or not isinstance(data.get("id"), int):
            raise ValueError("expected {organizationId, id, name}")
        return data
    except ValueError as e:
        raise InvalidInput(f"{f} is damaged ({e}): delete it to push the folder as a new block") from None


def write_identity(folder: Path, data: Mapping[str, Any]) -> None:
    f = folder / ".labelblocks-block.json"
    tmp = f.with_name(f".{f.name}.tmp")
    tmp.write_text(json.dumps(dict(data), indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, f)
