"""A project's side of organizations: attaching to one, seeing its blocks beside the
installed ones, and running a pushed block version from a verified copy the project keeps.

The member key and the attachment's key live in the user's secrets file (mode 0600, outside
any project), never in the project. The project remembers the organization's last list of
blocks and keeps every version it ran (the archive, its sha256 checked before each run, and
the unpacked folder), so a step still runs while the organization's server is down.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any, ClassVar

from cryptography.fernet import Fernet, InvalidToken

from ..errors import InvalidInput, NotFound
from ..external_blocks import ExternalBlock, add_to_registry
from ..plugins import BlockRegistry, RegisteredBlock, get_registry
from ..secrets import get_secret, remove_secret, set_secret
from ..store import Store
from ..store import organizations as db
from ..store.organizations import BlockCopy, OrgLink
from .client import OrgClient, Unreachable
from .org import docker_engine
from .pack import file_sha256, unpack

COPIES = "org-blocks"  # under the project's data folder
REFRESH_TIMEOUT = 3.0  # seconds a listing waits for an organization before using what it saw last
PREPARE_TIMEOUT = 900.0  # seconds `npm install` and a build may take when a copy is made


def key_secret(org_id: int) -> str:
    return f"LABELBLOCKS_ORG_{org_id}_KEY"


def seal_secret(org_id: int, attachment_id: int) -> str:
    return f"LABELBLOCKS_ORG_{org_id}_ATTACHMENT_{attachment_id}"


def attach(store: Store, project_name: str, url: str, key: str) -> OrgLink:
    """Attach the project to the organization at ``url`` with a member's ``key``."""
    client = OrgClient(url, key)
    org = client.organization()
    answer = client.attach(project_name)
    org_id, attachment_id = int(org["id"]), int(answer["attachmentId"])
    set_secret(key_secret(org_id), key)
    set_secret(seal_secret(org_id, attachment_id), str(answer["attachmentKey"]))
    now = time.time()
    link = OrgLink(org_id, str(org["name"]), client.display, attachment_id, client.blocks(), now, now)
    db.save_link(store, link)
    return link


def detach(store: Store, ident: str) -> OrgLink:
    link = find_link(store, ident)
    db.remove_link(store, link.org_id)
    remove_secret(seal_secret(link.org_id, link.attachment_id))
    return link


def find_link(store: Store, ident: str) -> OrgLink:
    links = db.list_links(store)
    for link in links:
        if ident in (str(link.org_id), link.name, link.url):
            return link
    known = ", ".join(f"{li.name} ({li.org_id})" for li in links) or "none"
    raise InvalidInput(f"the project is not attached to organization {ident!r} (attached: {known})")


def client_for(link: OrgLink, timeout: float = 30.0) -> OrgClient:
    key = get_secret(key_secret(link.org_id))
    if not key:
        raise InvalidInput(f"no key for organization {link.name} on this machine: run `labelblocks org attach "
                           f"{link.url} --key KEY` again")
    return OrgClient(link.url, key, timeout=timeout)


def refresh(store: Store, timeout: float = REFRESH_TIMEOUT) -> list[tuple[OrgLink, str | None]]:
    """Each attached organization, its block list renewed when it answers; (link, why not)."""
    out: list[tuple[OrgLink, str | None]] = []
    for link in db.list_links(store):
        try:
            catalogue = client_for(link, timeout).blocks()
        except InvalidInput as e:
            out.append((link, str(e)))
            continue
        db.update_catalogue(store, link.org_id, catalogue)
        out.append((OrgLink(link.org_id, link.name, link.url, link.attachment_id, catalogue, link.attached_at,
                            time.time()), None))
    return out


# --- organization blocks as blocks of the project ----------------------------------------------------


class OrgBlock(ExternalBlock):
    """A version of an organization's block (a subclass is made per version)."""

    store: ClassVar[Store]
    link: ClassVar[OrgLink]
    block_id: ClassVar[int]
    org_version: ClassVar[int]
    sha256: ClassVar[str]
    built_image: ClassVar[str | None] = None

    @classmethod
    def describe(cls) -> str:
        return f"version {cls.org_version} of {cls.link.name}'s block, " + super().describe()

    @classmethod
    def prepare_run(cls) -> dict[str, str]:
        """Make sure the project holds this version (verified), then fetch the block's sealed
        secrets (the last ones received while the organization is down)."""
        copy = _ensure_copy(cls)
        cls.directory = copy.path
        if cls.built_image and docker_engine() and _has_image(cls.built_image):
            cls.kind, cls.image, cls.command = "image", cls.built_image, []
        sealed = copy.sealed_env
        try:
            sealed = client_for(cls.link, REFRESH_TIMEOUT).sealed_environment(cls.block_id, cls.link.attachment_id)
            db.set_sealed_env(cls.store, cls.link.org_id, cls.block_id, cls.org_version, sealed)
        except Unreachable:
            if sealed is None and cls.spec().secret_names:
                raise InvalidInput(f"block {cls.name}: the organization {cls.link.name} ({cls.link.url}) cannot be "
                                   "reached and this project has not received the block's secrets yet") from None
        return _open_sealed(cls.link, sealed) if sealed else {}


def _has_image(image: str) -> bool:
    try:
        return subprocess.run(["docker", "image", "inspect", image], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, timeout=30, check=False).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def _open_sealed(link: OrgLink, sealed: str) -> dict[str, str]:
    key = get_secret(seal_secret(link.org_id, link.attachment_id))
    if not key:
        raise InvalidInput(f"this machine has no key to open organization {link.name}'s secrets: run "
                           f"`labelblocks org attach {link.url} --key KEY` again")
    try:
        env = json.loads(Fernet(key.encode()).decrypt(sealed.encode()))
    except (InvalidToken, ValueError):
        raise InvalidInput(f"organization {link.name}'s secrets cannot be opened with this machine's attachment key: "
                           f"run `labelblocks org attach {link.url} --key KEY` again") from None
    return {str(k): str(v) for k, v in env.items()}


def _ensure_copy(cls: type[OrgBlock]) -> BlockCopy:
    """The project's copy of the version: its archive checked against the recorded sha256
    (downloaded again when it is missing or changed, refused when that cannot be done)."""
    store, link = cls.store, cls.link
    root = store.root / COPIES / str(link.org_id)
    archive = root / f"{cls.sha256}.tar.gz"
    folder = root / f"{cls.name.split('@')[0]}-v{cls.org_version}-{cls.sha256[:12]}"
    copy = db.get_copy(store, link.org_id, cls.block_id, cls.org_version)
    intact = archive.exists() and file_sha256(archive)[0] == cls.sha256
    if not intact:
        try:
            got = client_for(link).download(cls.block_id, cls.org_version, cls.sha256, root)
        except Unreachable:
            state = "changed on disk" if archive.exists() else "not held by this project"
            raise InvalidInput(f"block {cls.name}: its copy is {state}, and the organization {link.name} "
                               f"({link.url}) cannot be reached to fetch it again") from None
        os.replace(got, archive)
        shutil.rmtree(folder, ignore_errors=True)
    if not folder.is_dir():
        _unpack_and_prepare(archive, folder)
    if copy is None or copy.path != str(folder):
        copy = BlockCopy(link.org_id, cls.block_id, cls.org_version, cls.name.split("@")[0], cls.sha256,
                         str(folder), copy.sealed_env if copy else None)
        db.save_copy(store, copy)
    return copy


def _unpack_and_prepare(archive: Path, folder: Path) -> None:
    """Unpack a block and, for a Node.js block, install its packages and build it (what its
    Dockerfile does), before the folder takes its place."""
    tmp = folder.with_name(folder.name + ".new")
    shutil.rmtree(tmp, ignore_errors=True)
    unpack(archive, tmp)
    try:
        if (tmp / "package.json").exists() and not (tmp / "node_modules").exists():
            for argv in (["npm", "install", "--no-audit", "--no-fund"], ["npm", "run", "build", "--if-present"]):
                try:
                    done = subprocess.run(argv, cwd=tmp, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                          stdin=subprocess.DEVNULL, timeout=PREPARE_TIMEOUT, check=False)
                except (OSError, subprocess.TimeoutExpired) as e:
                    raise InvalidInput(f"preparing the block in {folder}: `{' '.join(argv)}` failed: {e}") from None
                if done.returncode != 0:
                    tail = "\n".join(done.stdout.decode("utf-8", "replace").splitlines()[-20:])
                    raise InvalidInput(f"preparing the block in {folder}: `{' '.join(argv)}` exited with "
                                       f"{done.returncode}:\n{tail}")
        os.replace(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _make_class(store: Store, link: OrgLink, block: dict[str, Any], version: dict[str, Any],
                name: str) -> type[OrgBlock] | None:
    if not version.get("sha256") and not version.get("image"):
        return None
    spec = version["parametersJson"]
    attrs = {"name": name, "parameters": spec, "kind": "command", "command": list(version.get("command") or []),
             "directory": None, "image": None, "timeout": None, "__doc__": block.get("description"),
             "store": store, "link": link, "block_id": int(block["id"]), "org_version": int(version["version"]),
             "sha256": version.get("sha256") or "", "built_image": version.get("image")}
    if not version.get("sha256"):  # a container image registered without a folder
        attrs.update(kind="image", image=version["image"], command=[])
    return type(f"Org_{name}", (OrgBlock,), attrs)


def _register(store: Store, link: OrgLink, block: dict[str, Any], version: dict[str, Any],
              name: str) -> RegisteredBlock | None:
    cls = _make_class(store, link, block, version, name)
    if cls is None:
        return None
    tag = f"{link.name}@{version['version']}" + (f"+{str(version['sha256'])[:12]}" if version.get("sha256") else "")
    return RegisteredBlock(cls, f"org:{link.name}", tag)


def add_org_blocks(registry: BlockRegistry, store: Store, links: list[OrgLink]) -> None:
    """Register each organization block's latest version under its name (an installed or
    external block of that name wins), and resolve ``NAME@VERSION`` to a pinned version."""
    index: dict[str, tuple[OrgLink, dict[str, Any]]] = {}
    for link in links:
        for block in link.catalogue:
            index.setdefault(str(block["name"]), (link, block))
            versions = block.get("versions") or []
            if versions and block["name"] not in registry.blocks:
                reg = _register(store, link, block, versions[-1], str(block["name"]))
                if reg is not None:
                    registry.blocks[reg.name] = reg

    def pinned(name: str) -> RegisteredBlock | None:
        base, _, ver = name.rpartition("@")
        if not base or not ver.isdigit() or base not in index:
            return None
        link, block = index[base]
        versions = block.get("versions") or []
        version = next((v for v in versions if int(v["version"]) == int(ver)), None)
        if version is None:
            raise NotFound(f"organization block {base} ({link.name}) has no version {ver} (versions: "
                           f"{', '.join(str(v['version']) for v in versions) or 'none'}; see `labelblocks blocks "
                           f"versions {base}`)")
        return _register(store, link, block, version, name)

    registry.resolvers.append(pinned)


def project_registry(store: Store, refresh_orgs: bool = True) -> BlockRegistry:
    """The installed blocks, the project's external blocks and its organizations' blocks
    (their lists renewed first when ``refresh_orgs``, else as last seen)."""
    reg = add_to_registry(get_registry(), store)
    links = [link for link, _ in refresh(store)] if refresh_orgs else db.list_links(store)
    add_org_blocks(reg, store, links)
    return reg
