"""An organization's API (``labelblocks org serve``), under ``/v1/api/organizations/{id}``.

The block records follow the protocol's organization transformation-block shapes, so that
its bindings (``OrganizationBlocksApi``) read them; pushing (upload link, chunked upload,
finalize), downloading a version, secrets and attaching projects are labelblocks' own.
Every route needs a member's key in ``x-api-key``; pushing, removing and secrets need an
admin's. Secret values are accepted, never returned: a block's secrets leave only sealed
for an attached project.
"""

from __future__ import annotations

import asyncio
import json
import logging
import queue
import threading
from collections.abc import Iterator
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi import Path as PathParam
from fastapi.responses import FileResponse, StreamingResponse

from ...api.state import MAX_INT, ApiError, json_body
from ...errors import LabelblocksError
from ...registry.org import CHUNK, Organization, Pushed, transformation_json, version_json
from ...store.organizations import OrgKey

router = APIRouter(tags=["organizations"])
log = logging.getLogger("labelblocks.org")
PREFIX = "/v1/api/organizations/{organization_id}"


def get_org(request: Request) -> Organization:
    org: Organization = request.app.state.org
    return org


Org = Annotated[Organization, Depends(get_org)]


def member(request: Request, org: Org) -> OrgKey:
    """The caller's key (401 without a valid one)."""
    key = org.authenticate(request.headers.get("x-api-key"))
    if key is None:
        raise ApiError(401, "missing or invalid organization key: pass one (`labelblocks org keys create`) in x-api-key")
    return key


Member = Annotated[OrgKey, Depends(member)]


def checked_org(organization_id: Annotated[int, PathParam(ge=0, le=MAX_INT)], org: Org, _key: Member) -> int:
    if organization_id != org.info.id:
        raise ApiError(404, f"no organization {organization_id}: this server serves organization {org.info.id}")
    return organization_id


OrgId = Annotated[int, Depends(checked_org)]
Body = Annotated[dict[str, Any], Depends(json_body)]
BlockId = Annotated[int, PathParam(ge=0, le=MAX_INT)]
Version = Annotated[int, PathParam(ge=1, le=MAX_INT)]


def _id_field(body: dict[str, Any], name: str, what: str) -> int | None:
    """An id in a JSON body: absent or null is None; anything but a non-negative integer is a 400."""
    v = body.get(name)
    if v is None:
        return None
    if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v <= MAX_INT:
        raise ApiError(400, f"{name}: expected {what}")
    return v


def _org_json(org: Organization) -> dict[str, Any]:
    return {"id": org.info.id, "name": org.info.name, "isDeveloperProfile": False, "whitelabelId": None,
            "created": org.info.created_at}


@router.get("/v1/api/organizations")
def list_organizations(org: Org, _key: Member) -> dict[str, Any]:
    """The organization this key belongs to (the protocol lists a user's organizations)."""
    return {"success": True, "organizations": [_org_json(org)]}


@router.get(PREFIX)
def organization_info(org: Org, _id: OrgId) -> dict[str, Any]:
    return {"success": True, "organization": _org_json(org)}


@router.get(PREFIX + "/transformation")
def list_blocks(org: Org, _id: OrgId) -> dict[str, Any]:
    """The organization's blocks, each with its latest version's parameters and its versions."""
    blocks = org.blocks()
    return {"success": True, "transformationBlocks": [
        transformation_json(b, org.secret_names_of(b.id)) for b in blocks]}


@router.post(PREFIX + "/transformation")
def add_block(org: Org, _id: OrgId, key: Member, body: Body) -> dict[str, Any]:
    """Register a block that is a container image (the protocol's request shape)."""
    params = body.get("parameters") or []
    env = body.get("environmentVariables") or []
    operates = body.get("aiActionsOperatesOn") or []
    if not isinstance(params, list) or not isinstance(env, list) or not isinstance(operates, list):
        raise ApiError(400, "parameters, environmentVariables and aiActionsOperatesOn must be lists")
    env_keys = [str(e.get("key")) for e in env if isinstance(e, dict)]
    ver = org.register_image(key, str(body.get("name") or ""), str(body.get("description") or ""),
                             str(body.get("dockerContainer") or ""), params, [str(o) for o in operates], env_keys)
    for e in env:
        if isinstance(e, dict) and e.get("value"):
            org.set_secret(key, ver.block_id, str(e["key"]), str(e["value"]))
    return {"success": True, "id": ver.block_id}


@router.get(PREFIX + "/transformation/{transformation_id}")
def get_block(org: Org, _id: OrgId, transformation_id: BlockId) -> dict[str, Any]:
    block = org.block(transformation_id)
    return {"success": True, "transformationBlock": transformation_json(block, org.secret_names_of(block.id))}


@router.delete(PREFIX + "/transformation/{transformation_id}")
def remove_block(org: Org, _id: OrgId, key: Member, transformation_id: BlockId) -> dict[str, Any]:
    org.remove_block(key, transformation_id)
    return {"success": True}


@router.get(PREFIX + "/transformation/{transformation_id}/versions")
def list_versions(org: Org, _id: OrgId, transformation_id: BlockId) -> dict[str, Any]:
    block = org.block(transformation_id)
    return {"success": True, "name": block.name, "versions": [version_json(v) for v in block.versions]}


@router.get(PREFIX + "/transformation/{transformation_id}/versions/{version}/download")
def download(org: Org, _id: OrgId, transformation_id: BlockId, version: Version) -> FileResponse:
    """A version's tar.gz (its sha256 checked again first, and sent in ``x-sha256``)."""
    path, ver = org.archive(transformation_id, version)
    return FileResponse(path, media_type="application/gzip", headers={"x-sha256": ver.sha256 or ""},
                        filename=f"{org.block(transformation_id).name}-v{version}.tar.gz")


@router.get(PREFIX + "/transformation/{transformation_id}/secrets")
def secret_names(org: Org, _id: OrgId, key: Member, transformation_id: BlockId) -> dict[str, Any]:
    """The names of the block's secrets (values are never returned)."""
    org.require_admin(key, "listing a block's secrets")
    return {"success": True, "secrets": org.secret_names(key, transformation_id)}


@router.put(PREFIX + "/transformation/{transformation_id}/secrets/{name}")
def set_secret(org: Org, _id: OrgId, key: Member, transformation_id: BlockId, name: str, body: Body) -> dict[str, Any]:
    value = body.get("value")
    if not isinstance(value, str):
        raise ApiError(400, "value: expected the secret's text")
    org.set_secret(key, transformation_id, name, value)
    return {"success": True}


@router.post(PREFIX + "/transformation/{transformation_id}/environment")
def sealed_environment(org: Org, _id: OrgId, key: Member, transformation_id: BlockId, body: Body) -> dict[str, Any]:
    """The block's secrets sealed for an attached project (only it can open them)."""
    attachment = _id_field(body, "attachmentId", "the project's attachment id")
    if attachment is None:
        raise ApiError(400, "attachmentId: expected the project's attachment id")
    return {"success": True, "sealed": org.sealed_environment(key, transformation_id, attachment)}


@router.post(PREFIX + "/attach")
def attach(org: Org, _id: OrgId, key: Member, body: Body) -> dict[str, Any]:
    """Attach a project: its attachment id and key (shown once)."""
    attachment_id, attachment_key = org.attach(key, str(body.get("projectName") or "project"))
    return {"success": True, "attachmentId": attachment_id, "attachmentKey": attachment_key,
            "organization": _org_json(org)}


# --- pushing: upload link, upload, finalize ----------------------------------------------------------


@router.post(PREFIX + "/uploads")
def begin_upload(org: Org, _id: OrgId, key: Member, body: Body) -> dict[str, Any]:
    """Start a push: ``{name, sha256, size}`` → where to send it, in chunks of ``chunkSize``."""
    size = body.get("size")
    if not isinstance(size, int) or isinstance(size, bool):
        raise ApiError(400, "size: expected the archive's size in bytes")
    up = org.begin_upload(key, str(body.get("name") or ""), str(body.get("sha256") or ""), size)
    return {"success": True, "uploadId": up.id, "url": f"{PREFIX.format(organization_id=org.info.id)}/uploads/{up.id}",
            "chunkSize": CHUNK, "received": 0}


@router.get(PREFIX + "/uploads/{upload_id}")
def upload_state(org: Org, _id: OrgId, key: Member, upload_id: str) -> dict[str, Any]:
    """How much of an upload arrived (a push resumes from there)."""
    up, have = org.received(key, upload_id[:64])
    return {"success": True, "received": have, "size": up.size}


@router.put(PREFIX + "/uploads/{upload_id}")
async def upload_chunk(request: Request, org: Org, _id: OrgId, key: Member, upload_id: str,
                       offset: Annotated[int, Query(ge=0, le=MAX_INT)]) -> dict[str, Any]:
    """Append the body at ``offset`` (what arrived so far)."""
    data = await request.body()
    have = await asyncio.to_thread(org.write_chunk, key, upload_id[:64], offset, data)
    return {"success": True, "received": have}


@router.post(PREFIX + "/uploads/{upload_id}/finalize", response_model=None)
def finalize(request: Request, org: Org, _id: OrgId, key: Member, upload_id: str,
             body: Body) -> dict[str, Any] | StreamingResponse:
    """Check the archive and record it as the block's next version; ``env`` sets its secrets.
    An image is built where a Docker engine answers (otherwise the block runs as its folder
    and command). With ``Accept: application/x-ndjson`` the build's log streams as it is
    written, one ``{"log": line}`` per line, then ``{"success": true, ...}`` or the error."""
    block_id = _id_field(body, "blockId", "the block's id, or null for a new block")
    env = body.get("env") or {}
    if not isinstance(env, dict) or not all(isinstance(v, str) for v in env.values()):
        raise ApiError(400, "env: expected an object of secret names to values")
    if "application/x-ndjson" not in request.headers.get("accept", ""):
        return _pushed(org.finalize(key, upload_id[:64], block_id, env))
    lines: queue.Queue[dict[str, Any] | None] = queue.Queue()

    def work() -> None:
        try:
            pushed = org.finalize(key, upload_id[:64], block_id, env, on_log=lambda line: lines.put({"log": line}))
            lines.put(_pushed(pushed))
        except LabelblocksError as e:
            lines.put({"success": False, "error": str(e)})
        except Exception as e:  # the stream has started: the error goes in it
            log.exception("finalizing upload %s", upload_id)
            lines.put({"success": False, "error": f"internal error ({type(e).__name__}): see the server's log"})
        finally:
            lines.put(None)

    def stream() -> Iterator[bytes]:
        threading.Thread(target=work, name="labelblocks-push", daemon=True).start()
        while (item := lines.get()) is not None:
            yield json.dumps(item).encode() + b"\n"

    return StreamingResponse(stream(), media_type="application/x-ndjson")


def _pushed(pushed: Pushed) -> dict[str, Any]:
    return {"success": True, "id": pushed.block.id, "name": pushed.block.name, "version": pushed.version.version,
            "sha256": pushed.version.sha256, "build": pushed.build, "buildLog": pushed.build_log,
            "image": pushed.version.image, "secretsSet": pushed.secrets_set}
