"""The protocol's media endpoints: a sample's image, its audio as WAV, its file as stored
(``/raw`` and ``/original``).

Answers stream: a file is sent from disk, and audio is decoded and converted block by block,
so one request holds a few megabytes whatever the length of the recording.
"""

from __future__ import annotations

import json
import struct
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse, Response, StreamingResponse

from .state import ApiError, Auth, OptionalQueryInt, ProjectId, QueryInt, SampleId, State

router = APIRouter(prefix="/v1/api/{project_id}/raw-data/{sample_id}", tags=["raw-data"])

BLOCK_FRAMES = 65_536  # audio frames decoded at a time


@router.get("/image")
def get_image(project_id: ProjectId, sample_id: SampleId, state: State, a: Auth) -> Response:
    a.check_sample(sample_id)
    store = state.store
    s = store.get_sample(sample_id)
    if s.width is None:
        raise ApiError(400, f"sample {sample_id} is not an image: use /wav or /raw")
    return FileResponse(store.blob_path(s), media_type=s.media_type or "application/octet-stream")


@router.get("/wav")
def get_wav(project_id: ProjectId, sample_id: SampleId, state: State, a: Auth, axisIx: QueryInt = 0,
            sliceStart: OptionalQueryInt = None, sliceEnd: OptionalQueryInt = None) -> Response:
    a.check_sample(sample_id)
    store = state.store
    s = store.get_sample(sample_id)
    if not s.is_audio:
        raise ApiError(400, f"sample {sample_id} is not audio: use /image or /raw")
    if axisIx != 0:
        raise ApiError(400, f"axisIx: sample {sample_id} has one axis (0), got {axisIx}")
    path = store.blob_path(s)
    if s.media_type == "audio/wav" and sliceStart is None and sliceEnd is None:
        return FileResponse(path, media_type="audio/wav")
    frames, channels, rate = stored_audio_header(path)
    start = min(sliceStart or 0, frames)
    end = max(start, min(frames if sliceEnd is None else sliceEnd, frames))
    return StreamingResponse(_wav_stream(path, start, end, channels, rate), media_type="audio/wav",
                             headers={"content-length": str(44 + (end - start) * channels * 2)})


@router.get("/raw")
@router.get("/original")
def get_raw(project_id: ProjectId, sample_id: SampleId, state: State, a: Auth) -> Response:
    """The file as it was uploaded (``/raw``, the bindings' get_sample_as_raw; ``/original``)."""
    a.check_sample(sample_id)
    store = state.store
    s = store.get_sample(sample_id)
    return FileResponse(store.blob_path(s), media_type=s.media_type or "application/octet-stream",
                        headers={"content-disposition": f"attachment; filename*=UTF-8''{urllib.parse.quote(s.filename)}"})


def stored_audio_header(path: Path) -> tuple[int, int, int]:
    """A stored audio file's (frames, channels, rate), read from its header (500 if the file
    went bad on disk: uploads refuse corrupt audio)."""
    from ..media import open_audio

    try:
        with path.open("rb") as fh, open_audio(fh) as f:
            return int(f.frames), int(f.channels), int(f.samplerate)
    except ValueError as e:
        raise ApiError(500, f"the stored audio cannot be read: {e}") from None


def _blocks(path: Path, start: int, end: int, mono: bool) -> Iterator[object]:
    """The audio of frames ``start..end`` as float32 blocks ([frames, channels], or [frames]
    mixed to mono)."""
    from ..media import open_audio

    with path.open("rb") as fh, open_audio(fh) as f:
        if start:
            f.seek(start)
        left = end - start
        while left > 0:
            block = f.read(min(BLOCK_FRAMES, left), dtype="float32", always_2d=True)
            if not len(block):
                return
            left -= len(block)
            yield block.mean(axis=1) if mono else block


def audio_values_json(path: Path, n: int) -> Iterator[bytes]:
    """The first ``n`` values of a stored audio file, mono, as the protocol's JSON list of
    one-value lists (``[[0.1],[0.2],...]``), in pieces."""
    yield b"["
    sep = b""
    for block in _blocks(path, 0, n, mono=True):
        values: list[float] = block.tolist()  # type: ignore[attr-defined]
        if values:  # json.dumps writes "[a, b]" (C speed): the protocol's form is "[[a],[b]]"
            yield sep + b"[" + json.dumps(values)[1:-1].replace(", ", "],[").encode() + b"]"
            sep = b","
    yield b"]"


def _wav_stream(path: Path, start: int, end: int, channels: int, rate: int) -> Iterator[bytes]:
    """Frames ``start..end`` of a stored audio file as a 16-bit PCM WAV, block by block."""
    import numpy as np

    data_bytes = (end - start) * channels * 2
    yield (b"RIFF" + struct.pack("<I", 36 + data_bytes) + b"WAVEfmt "
           + struct.pack("<IHHIIHH", 16, 1, channels, rate, rate * channels * 2, channels * 2, 16)
           + b"data" + struct.pack("<I", data_bytes))
    sent = 0
    for block in _blocks(path, start, end, mono=False):
        pcm = (np.clip(block, -1.0, 1.0) * 32767.0).round().astype("<i2")  # type: ignore[call-overload]
        yield pcm.tobytes()
        sent += pcm.size * 2
    if sent < data_bytes:  # the file held fewer frames than its header said: keep the length promised
        yield bytes(data_bytes - sent)
