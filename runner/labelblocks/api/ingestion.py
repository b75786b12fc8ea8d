"""The protocol's ingestion service: ``POST /api/{training|testing|validation|split}/files``.

Multipart field ``data`` (one or many files) and the headers ``x-label`` (URL-encoded),
``x-no-label: 1``, ``x-metadata`` (a JSON object of strings), ``x-disallow-duplicates: 1``,
``x-add-date-id: 1`` and ``x-file-name``. Files go through the same pipeline as
``labelblocks upload``: one bad file is refused alone, with its reason, and the others land.
"""

from __future__ import annotations

import secrets
import time
import urllib.parse
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from starlette.datastructures import UploadFile

from ..constants import UPLOAD_CATEGORIES
from ..errors import InvalidInput
from ..model import parse_json
from ..uploads import INFER, Outcome, UploadItem, check_name, upload
from .state import ApiError, Auth, BodyTooLarge, ServerState, State, header

router = APIRouter(tags=["ingestion"])


@router.post("/api/{category}/files")
async def ingest(category: str, request: Request, state: State, a: Auth) -> JSONResponse:
    if a.scope is not None:
        raise ApiError(403, "a job's key cannot upload samples: an action's results are proposals, applied after review")
    return await ingest_request(state, category, request)


def _flag(request: Request, name: str) -> bool:
    return request.headers.get(name, "").strip().lower() in ("1", "true", "yes")


def _multipart_problem(e: Exception) -> str:
    """What is wrong with a multipart body, from the parser's own reason."""
    root: BaseException = e
    while root.__cause__ is not None or root.__context__ is not None:
        root = root.__cause__ or root.__context__  # type: ignore[assignment]
    reason = str(root)
    if "header size" in reason.lower():
        return ("a part's headers are longer than 4 KB: is its file name that long? "
                "File names are limited to 255 bytes of UTF-8")
    return reason


def safe_name(name: str) -> str:
    """A file name without folders or control characters (``../../x.png`` is ``x.png``)."""
    base = Path(name.replace("\\", "/")).name
    base = "".join(ch for ch in base if ch.isprintable())
    return base.strip() or "file"


def _date_id(name: str) -> str:
    p = Path(name)
    return f"{p.stem}.{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}{p.suffix}"


async def ingest_request(state: ServerState, category: str, request: Request) -> JSONResponse:
    if category not in UPLOAD_CATEGORIES:
        raise ApiError(404, f"unknown category {category!r}: expected one of {', '.join(UPLOAD_CATEGORIES)}")
    label: Any = INFER
    if _flag(request, "x-no-label"):
        label = None
    elif (raw_label := header(request, "x-label")) is not None:
        label = urllib.parse.unquote(raw_label).strip() or None
    metadata: dict[str, str] = {}
    if (raw_md := header(request, "x-metadata")) is not None:
        try:
            md = parse_json(raw_md, "x-metadata", "a JSON object of strings")
        except InvalidInput as e:
            raise ApiError(400, str(e)) from None
        if not isinstance(md, dict) or not all(isinstance(k, str) and k and isinstance(v, str) for k, v in md.items()):
            raise ApiError(400, "x-metadata: expected a JSON object of non-empty string keys and string values")
        metadata = md
    content_type = request.headers.get("content-type", "")
    if not content_type.startswith("multipart/form-data"):
        raise ApiError(400, f"expected a multipart/form-data body with files in the field 'data', got {content_type or 'no content type'!r}")
    limits = state.limits
    try:
        form = await request.form(max_files=limits.files, max_fields=100, max_part_size=limits.file_bytes)
    except (ApiError, BodyTooLarge):
        raise
    except Exception as e:
        raise ApiError(400, f"malformed multipart body: {_multipart_problem(e)}") from None
    try:
        files = [f for f in form.getlist("data") if isinstance(f, UploadFile)]
        if not files:
            raise ApiError(400, "no files: send them in the multipart field 'data'")
        file_name = header(request, "x-file-name")
        if file_name is not None and len(files) != 1:
            raise ApiError(400, f"x-file-name names one file, but {len(files)} were sent")
        items: list[UploadItem | Outcome] = []
        names: list[str] = []
        for f in files:
            name = safe_name(urllib.parse.unquote(file_name) if file_name is not None else (f.filename or "file"))
            if _flag(request, "x-add-date-id"):
                name = _date_id(name)
            source = str(len(names))  # outcomes come back in processing order: answer in request order
            names.append(name)
            try:
                check_name(name)
            except InvalidInput as e:
                items.append(Outcome(source, "rejected", error=str(e)))
                continue
            data = await f.read(limits.file_bytes + 1)
            if len(data) > limits.file_bytes:
                items.append(Outcome(source, "rejected", error=f"file too large: the limit is {limits.file_bytes} bytes"))
                continue
            items.append(UploadItem(source=source, name=name, category=category, label=label, metadata=dict(metadata),
                                    data=data))
    finally:
        await form.close()
    report = await run_in_threadpool(upload, state.store, items, _flag(request, "x-disallow-duplicates"),
                                     max_pixels=limits.max_pixels)
    out = report.to_json()
    out["files"].sort(key=lambda f: int(f["path"]))
    for f in out["files"]:
        f["fileName"] = names[int(f.pop("path"))]
    return JSONResponse(out)
