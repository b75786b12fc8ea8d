"""The protocol's media endpoints: a sample's image, its audio as WAV, its file as stored."""

from __future__ import annotations

import io
import urllib.parse
from typing import Any

from fastapi import APIRouter
from fastapi.responses import Response

from .state import ApiError, Auth, ProjectId, State

router = APIRouter(prefix="/v1/api/{project_id}/raw-data/{sample_id}", tags=["raw-data"])


@router.get("/image")
def get_image(project_id: ProjectId, sample_id: int, state: State, _auth: Auth) -> Response:
    store = state.store
    s = store.get_sample(sample_id)
    if s.width is None:
        raise ApiError(400, f"sample {sample_id} is not an image: use /wav or /raw")
    return Response(store.blob_path(s).read_bytes(), media_type=s.media_type or "application/octet-stream")


@router.get("/wav")
def get_wav(project_id: ProjectId, sample_id: int, state: State, _auth: Auth, axisIx: int = 0,
            sliceStart: int | None = None, sliceEnd: int | None = None) -> Response:
    store = state.store
    s = store.get_sample(sample_id)
    if not s.is_audio:
        raise ApiError(400, f"sample {sample_id} is not audio: use /image or /raw")
    if axisIx != 0:
        raise ApiError(400, f"axisIx: sample {sample_id} has one axis (0), got {axisIx}")
    data = store.blob_path(s).read_bytes()
    if s.media_type != "audio/wav" or sliceStart is not None or sliceEnd is not None:
        data = _wav(data, sliceStart, sliceEnd)
    return Response(data, media_type="audio/wav")


@router.get("/raw")
def get_raw(project_id: ProjectId, sample_id: int, state: State, _auth: Auth) -> Response:
    store = state.store
    s = store.get_sample(sample_id)
    return Response(store.blob_path(s).read_bytes(), media_type=s.media_type or "application/octet-stream",
                    headers={"content-disposition": f"attachment; filename*=UTF-8''{urllib.parse.quote(s.filename)}"})


def stored_audio(data: bytes, mono: bool) -> tuple[Any, int]:
    """A stored audio file's samples and rate (500 if the file went bad on disk)."""
    from ..media import read_audio

    try:
        return read_audio(data, mono=mono)
    except ValueError as e:  # the file went bad on disk after upload (uploads refuse corrupt audio)
        raise ApiError(500, f"the stored audio cannot be read: {e}") from None


def _wav(data: bytes, start: int | None, end: int | None) -> bytes:
    import soundfile as sf

    audio, rate = stored_audio(data, mono=False)
    audio = audio[start or 0 : end]
    out = io.BytesIO()
    sf.write(out, audio, rate, format="WAV", subtype="PCM_16")
    return out.getvalue()
