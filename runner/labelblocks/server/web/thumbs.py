"""Thumbnails and waveform strips, made with Pillow on first request and cached on disk by
content hash (a file's pictures never change: its hash names it)."""

from __future__ import annotations

import io
import os
import secrets
from pathlib import Path

from ...errors import InvalidInput, NotFound
from ...media import open_image, read_audio
from ...store import Store

WAVE_SIZE = (600, 64)


def _cached(folder: Path, name: str) -> Path:
    return folder / name[:2] / name


def _blob(store: Store, content_hash: str) -> bytes:
    try:
        return store.blobs.path(content_hash).read_bytes()
    except FileNotFoundError:
        raise NotFound("no such file in this project") from None


def _write(path: Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (a concurrent reader sees all or nothing)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
    tmp.write_bytes(data)
    os.replace(tmp, path)
    return path


def thumbnail(store: Store, folder: Path, content_hash: str, size: int) -> Path:
    """A JPEG no larger than ``size`` on its longer side, with the EXIF orientation applied
    as the store applies it (so boxes drawn in the stored width and height fit it)."""
    path = _cached(folder, f"{content_hash}-{size}.jpg")
    if path.exists():
        return path
    try:
        img = open_image(_blob(store, content_hash))
    except (OSError, ValueError) as e:
        raise InvalidInput(f"not an image: {e}") from None
    img.thumbnail((size, size))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=85)
    return _write(path, buf.getvalue())


def waveform_png(store: Store, folder: Path, content_hash: str) -> Path:
    """The recording's waveform (min and max per column) as a PNG strip."""
    path = _cached(folder, f"{content_hash}-wave.png")
    if path.exists():
        return path
    import numpy as np
    from PIL import Image, ImageDraw

    try:
        audio, _ = read_audio(_blob(store, content_hash))
    except (OSError, ValueError) as e:
        raise InvalidInput(f"not audio: {e}") from None
    w, h = WAVE_SIZE
    im = Image.new("RGB", (w, h), (248, 248, 250))
    draw = ImageDraw.Draw(im)
    if audio.size:
        cols = np.array_split(np.asarray(audio, dtype=np.float32), min(w, audio.size))
        peak = float(np.abs(audio).max()) or 1.0
        for x, col in enumerate(cols):
            lo, hi = float(col.min()) / peak, float(col.max()) / peak
            draw.line([(x, h / 2 - hi * h / 2), (x, h / 2 - lo * h / 2)], fill=(70, 90, 130))
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return _write(path, buf.getvalue())
