"""An organization: a folder holding ``.labelblocks-org/`` (its database, the pushed blocks'
archives, uploads under way, and ``org.key``, the key its secrets are encrypted with, mode
0600, outside the database).

Members hold keys with a role: an admin may push blocks, remove them and set their secrets;
a member may list and download blocks, attach projects and run blocks. Every pushed version
is immutable and kept as a tar.gz named by its sha256, checked again whenever it is read.
A block's secrets leave the organization only sealed for an attached project (encrypted
with that attachment's own key), to be given to that block as environment variables.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.fernet import Fernet, InvalidToken

from ..errors import InvalidInput, NotFound, ProjectNotFound
from ..parameters import load_parameters
from ..store import DB_NAME, Store
from ..store import organizations as db
from ..store.organizations import OrgBlock, OrgInfo, OrgKey, OrgVersion
from .pack import MAX_ARCHIVE, file_sha256, read_archive, unpack

ORG_DIR = ".labelblocks-org"
ORG_ENV = "LABELBLOCKS_ORG_DIR"
KEY_FILE = "org.key"
CHUNK = 8 * 1024 * 1024  # bytes a push sends per request
UPLOAD_TTL = 24 * 3600.0  # seconds an unfinished upload is kept
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_SHA = re.compile(r"^[0-9a-f]{64}$")


class Forbidden(InvalidInput):
    """The key's role does not allow this."""


def check_block_name(name: str) -> str:
    if not _NAME.match(name):
        raise InvalidInput(f"block name {name!r}: expected letters, digits, '.', '_' and '-' (at most 64), "
                           "starting with a letter or digit")
    return name


def slug(text: str) -> str:
    """A block name made of ``text`` (a parameters.json's info.name)."""
    out = re.sub(r"[^a-z0-9._-]+", "-", text.lower()).strip("-._")
    return out[:64] or "block"


def init_org(directory: Path, name: str) -> tuple[Organization, str]:
    """Make ``directory`` an organization; returns it and its first admin key (shown once)."""
    d = Path(directory).resolve()
    data = d / ORG_DIR
    if (data / DB_NAME).exists():
        raise InvalidInput(f"{d} is already a labelblocks organization")
    if d.exists() and not d.is_dir():
        raise InvalidInput(f"{d} exists and is not a folder")
    data.mkdir(parents=True, exist_ok=True)
    key_file = data / KEY_FILE
    fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(Fernet.generate_key())
    with Store.open(data, create=True) as store:
        db.init_org_info(store, secrets.randbelow(900_000) + 100_000, name.strip() or d.name)
        _, key = db.create_org_key(store, "admin", "admin")
    return Organization(d), key


def find_org(explicit: str | Path | None = None) -> Path:
    """The organization folder: ``explicit``, else ``$LABELBLOCKS_ORG_DIR``, else the current
    folder or the nearest parent holding one."""
    chosen = explicit or os.environ.get(ORG_ENV)
    if chosen:
        d = Path(chosen).expanduser().resolve()
        if not (d / ORG_DIR / DB_NAME).exists():
            raise ProjectNotFound(f"{d} is not a labelblocks organization: run `labelblocks org init {chosen}`")
        return d
    here = Path.cwd().resolve()
    for d in (here, *here.parents):
        if (d / ORG_DIR / DB_NAME).exists():
            return d
    raise ProjectNotFound(f"no labelblocks organization in {here} or any parent folder: run `labelblocks org init "
                          f"DIR`, or pass --dir DIR (or set {ORG_ENV})")


def docker_engine() -> bool:
    """Whether a Docker engine answers here."""
    if not shutil.which("docker"):
        return False
    try:
        return subprocess.run(["docker", "info"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              timeout=20, check=False).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@dataclass
class Pushed:
    """What a push made: the version, and how it runs (``image`` when a Docker engine built one)."""

    block: OrgBlock
    version: OrgVersion
    build: str  # image | folder
    build_log: str
    secrets_set: list[str]


class Organization:
    """An opened organization folder. Use as a context manager or call close()."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder).resolve()
        self.data = self.folder / ORG_DIR
        self.store = Store.open(self.data)
        key_file = self.data / KEY_FILE
        try:
            if key_file.stat().st_mode & 0o077:
                os.chmod(key_file, 0o600)
            self._fernet = Fernet(key_file.read_bytes().strip())
        except (OSError, ValueError) as e:
            self.store.close()
            raise InvalidInput(f"cannot read the organization's key file {key_file}: {e}") from None
        info = db.get_org_info(self.store)
        if info is None:
            self.store.close()
            raise InvalidInput(f"{self.folder} is not an initialised organization (no identity): run `labelblocks org init`")
        self.info: OrgInfo = info
        (self.data / "archives").mkdir(exist_ok=True)
        (self.data / "uploads").mkdir(exist_ok=True)

    def close(self) -> None:
        self.store.close()

    def __enter__(self) -> Organization:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- keys --------------------------------------------------------------------------------

    def authenticate(self, key: str | None) -> OrgKey | None:
        return db.verify_org_key(self.store, key)

    @staticmethod
    def require_admin(key: OrgKey, what: str) -> None:
        if key.role != "admin":
            raise Forbidden(f"{what} needs an admin key; key {key.name!r} is a member's "
                            "(an admin makes one with `labelblocks org keys create NAME --role admin`)")

    # --- blocks --------------------------------------------------------------------------------

    def blocks(self) -> list[OrgBlock]:
        return db.list_org_blocks(self.store)

    def block(self, ident: int | str) -> OrgBlock:
        return db.get_org_block(self.store, ident)

    def archive(self, block_id: int, version: int) -> tuple[Path, OrgVersion]:
        """A version's archive, its hash checked again: a file changed since the push is refused."""
        block = self.block(block_id)
        ver = next((v for v in block.versions if v.version == version), None)
        if ver is None:
            raise NotFound(f"block {block.name!r} has no version {version} (versions: "
                           f"{', '.join(str(v.version) for v in block.versions) or 'none'})")
        if ver.sha256 is None:
            raise NotFound(f"version {version} of block {block.name!r} is a container image ({ver.image}) without a folder")
        path = self.data / "archives" / f"{ver.sha256}.tar.gz"
        if not path.exists():
            raise InvalidInput(f"the archive of {block.name} version {version} is missing from the organization")
        if file_sha256(path)[0] != ver.sha256:
            raise InvalidInput(f"the stored archive of {block.name} version {version} no longer matches its sha256 "
                               "(it was changed on disk): refused; push the block again")
        return path, ver

    def remove_block(self, key: OrgKey, block_id: int) -> OrgBlock:
        self.require_admin(key, "removing a block")
        block = self.block(block_id)
        db.delete_org_block(self.store, block_id)
        used = db.used_archives(self.store)
        for v in block.versions:
            if v.sha256 and v.sha256 not in used:
                (self.data / "archives" / f"{v.sha256}.tar.gz").unlink(missing_ok=True)
        return block

    def register_image(self, key: OrgKey, name: str, description: str, image: str, parameters: list[dict[str, Any]],
                       operates_on: list[str], env_keys: list[str]) -> OrgVersion:
        """A block that is only a container image (the protocol's own way to add one)."""
        self.require_admin(key, "adding a block")
        check_block_name(name)
        if not image.strip():
            raise InvalidInput("dockerContainer: expected the block's container image")
        doc = {"version": 1, "type": "ai-action",
               "info": {"name": name, "description": description, "operatesOn": operates_on or ["other"],
                        "requiredEnvVariables": env_keys}, "parameters": parameters}
        spec = load_parameters(doc, "parameters")
        return db.add_org_version(self.store, name, description, list(spec.info.operates_on), block_id=None,
                                  sha256=None, size=0, parameters=spec.model_dump(by_alias=True, exclude_none=True),
                                  command=[], image=image.strip(), build_log="", pushed_by=key.name)

    # --- pushing: upload link, upload, finalize ------------------------------------------------

    def _part(self, upload_id: str) -> Path:
        return self.data / "uploads" / f"{upload_id}.part"

    def begin_upload(self, key: OrgKey, name: str, sha256: str, size: int) -> db.OrgUpload:
        self.require_admin(key, "pushing a block")
        check_block_name(name)
        if not _SHA.match(sha256):
            raise InvalidInput("sha256: expected 64 lowercase hex digits")
        if not 0 < size <= MAX_ARCHIVE:
            raise InvalidInput(f"size: expected 1 to {MAX_ARCHIVE} bytes, got {size}")
        self._drop_stale_uploads()
        upload = db.create_upload(self.store, secrets.token_hex(16), name, sha256, size, key.id)
        self._part(upload.id).touch()
        return upload

    def _drop_stale_uploads(self) -> None:
        for uid in db.stale_uploads(self.store, time.time() - UPLOAD_TTL):
            self._discard(uid)

    def _discard(self, upload_id: str) -> None:
        db.delete_upload(self.store, upload_id)
        self._part(upload_id).unlink(missing_ok=True)

    def received(self, key: OrgKey, upload_id: str) -> tuple[db.OrgUpload, int]:
        upload = self._own_upload(key, upload_id)
        part = self._part(upload_id)
        return upload, part.stat().st_size if part.exists() else 0

    def _own_upload(self, key: OrgKey, upload_id: str) -> db.OrgUpload:
        self.require_admin(key, "pushing a block")
        upload = db.get_upload(self.store, upload_id)
        if upload.key_id != key.id:
            raise NotFound(f"no upload {upload_id!r} of this key")
        return upload

    def write_chunk(self, key: OrgKey, upload_id: str, offset: int, data: bytes) -> int:
        """Append ``data`` at ``offset`` (which must be what was received so far: a resumed push
        asks first). Returns the bytes received."""
        upload, have = self.received(key, upload_id)
        if offset != have:
            raise InvalidInput(f"offset {offset}: the upload has {have} bytes; send from there")
        if have + len(data) > upload.size:
            raise InvalidInput(f"the upload would exceed the {upload.size} bytes announced")
        with self._part(upload_id).open("ab") as f:
            f.write(data)
        return have + len(data)

    def finalize(self, key: OrgKey, upload_id: str, block_id: int | None, env: Mapping[str, str],
                 on_log: Callable[[str], None] | None = None) -> Pushed:
        """Check the uploaded archive (size, sha256, safe paths, a valid parameters.json) and
        record it as the block's next version; ``env`` sets the block's secrets. On any
        failure nothing is kept (the upload is discarded and must start again)."""
        upload, have = self.received(key, upload_id)
        part = self._part(upload_id)
        try:
            if have != upload.size:
                raise InvalidInput(f"the upload has {have} of its {upload.size} bytes: send the rest before finalizing")
            got, _ = file_sha256(part)
            if got != upload.sha256:
                raise InvalidInput(f"sha256 mismatch: the push announced {upload.sha256}, the bytes received hash "
                                   f"to {got}; push again")
            spec, doc, command = read_archive(part)
            for k, v in env.items():
                if not _ENV_NAME.match(k):
                    raise InvalidInput(f"secret name {k!r}: expected an environment variable name")
                if not v:
                    raise InvalidInput(f"secret {k}: the value is empty")
            if not command:
                raise InvalidInput("the block has no Dockerfile with an ENTRYPOINT or CMD: it says how the block runs")
            log_lines: list[str] = []

            def log(line: str) -> None:
                log_lines.append(line)
                if on_log:
                    on_log(line)

            image = self._build(part, upload.block_name, log)
            archive = self.data / "archives" / f"{upload.sha256}.tar.gz"
            if not archive.exists():
                os.replace(part, archive)
            version = db.add_org_version(
                self.store, upload.block_name, spec.info.description or spec.info.name, list(spec.info.operates_on),
                block_id=block_id, sha256=upload.sha256, size=upload.size, parameters=doc, command=command,
                image=image, build_log="\n".join(log_lines), pushed_by=key.name)
        except BaseException:
            self._discard(upload_id)
            raise
        self._discard(upload_id)
        for k, v in env.items():
            self.set_secret(key, version.block_id, k, v)
        return Pushed(self.block(version.block_id), version, "image" if image else "folder", "\n".join(log_lines),
                      sorted(env))

    def _build(self, archive: Path, name: str, log: Callable[[str], None]) -> str | None:
        """Build the block's container image when a Docker engine answers; its tag, or None."""
        if not docker_engine():
            log("no Docker engine on the organization's server: the block runs as its folder and command")
            return None
        tag = f"labelblocks-org-{self.info.id}/{name}:{secrets.token_hex(4)}"
        with tempfile.TemporaryDirectory(prefix="labelblocks-build-") as d:
            unpack(archive, Path(d) / "block")
            proc = subprocess.Popen(["docker", "build", "-t", tag, str(Path(d) / "block")], stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
            assert proc.stdout is not None
            tail: list[str] = []
            for raw in proc.stdout:
                line = raw.decode("utf-8", "replace").rstrip("\n")
                tail = [*tail[-29:], line]
                log(line)
            if proc.wait() != 0:
                raise InvalidInput(f"docker build failed (exit {proc.returncode}); the end of its log:\n" + "\n".join(tail))
        log(f"built image {tag}")
        return tag

    # --- secrets -------------------------------------------------------------------------------

    def set_secret(self, key: OrgKey, block_id: int, name: str, value: str) -> None:
        self.require_admin(key, "setting a block's secret")
        if not _ENV_NAME.match(name):
            raise InvalidInput(f"secret name {name!r}: expected an environment variable name")
        if not value:
            raise InvalidInput(f"secret {name}: the value is empty")
        self.block(block_id)
        db.set_org_secret(self.store, block_id, name, self._fernet.encrypt(value.encode()).decode())

    def secret_names(self, key: OrgKey, block_id: int) -> list[str]:
        """The names of a block's secrets (an admin's question; values never leave but sealed)."""
        self.require_admin(key, "listing a block's secrets")
        self.block(block_id)
        return self.secret_names_of(block_id)

    def secret_names_of(self, block_id: int) -> list[str]:
        return sorted(db.org_secret_tokens(self.store, block_id))

    # --- attached projects ---------------------------------------------------------------------

    def attach(self, key: OrgKey, project_name: str) -> tuple[int, str]:
        """Attach a project; returns the attachment's id and its key (shown once), which the
        block secrets this project receives are sealed with."""
        attachment_key = Fernet.generate_key().decode()
        token = self._fernet.encrypt(attachment_key.encode()).decode()
        return db.add_attachment(self.store, project_name[:200] or "project", key.id, token), attachment_key

    def sealed_environment(self, key: OrgKey, block_id: int, attachment_id: int) -> str:
        """The block's secrets as one token only the attached project can open."""
        token = db.attachment_token(self.store, attachment_id)
        if token is None:
            raise NotFound(f"no attached project {attachment_id}: attach the project again (`labelblocks org attach`)")
        try:
            sealer = Fernet(self._fernet.decrypt(token.encode()))
            env = {k: self._fernet.decrypt(v.encode()).decode() for k, v in
                   db.org_secret_tokens(self.store, block_id).items()}
        except InvalidToken:
            raise InvalidInput("the organization's secrets cannot be decrypted with its key file "
                               f"({self.data / KEY_FILE}): was it replaced?") from None
        return sealer.encrypt(json.dumps(env).encode()).decode()


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, tz=UTC).isoformat().replace("+00:00", "Z")


def transformation_json(block: OrgBlock, secret_names: list[str], version: OrgVersion | None = None) -> dict[str, Any]:
    """The protocol's organization transformation-block record of ``block`` (its latest
    version unless ``version``), plus labelblocks' ``versions``. Secret values never appear."""
    ver = version or block.latest
    params = ver.parameters if ver else {}
    env_names = sorted({*secret_names, *params.get("info", {}).get("requiredEnvVariables", [])})
    return {
        "id": block.id, "name": block.name, "description": block.description,
        "dockerContainer": (ver.image or "") if ver else "", "dockerContainerManagedByEdgeImpulse": False,
        "created": _iso(block.created_at), "lastUpdated": _iso(block.updated_at),
        "userName": ver.pushed_by if ver else None, "cliArguments": "", "indMetadata": False,
        "additionalMountPoints": [], "operatesOn": "standalone", "allowExtraCliArguments": False,
        "parameters": params.get("parameters", []), "sourceCodeAvailable": bool(ver and ver.sha256),
        "sourceCodeDownloadStaffOnly": False, "isPublic": False, "publicProjectTierAvailability": "enterprise-only",
        "showInDataSources": False, "showInCreateTransformationJob": False, "showInSyntheticData": False,
        "showInAIActions": True, "environmentVariables": [{"key": k} for k in env_names],
        "aiActionsOperatesOn": block.operates_on,
        "version": ver.version if ver else None,
        "versions": [version_json(v) for v in block.versions],
    }


def version_json(v: OrgVersion) -> dict[str, Any]:
    return {"version": v.version, "sha256": v.sha256, "size": v.size, "image": v.image,
            "build": "image" if v.image else "folder", "command": v.command, "pushedBy": v.pushed_by,
            "created": _iso(v.created_at), "parametersJson": v.parameters}
