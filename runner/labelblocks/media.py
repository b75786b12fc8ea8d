"""Reading media: what a file is (image or audio), its dimensions or sample rate, and decoding.

Images: the formats Pillow reads; dimensions respect EXIF orientation. Audio: WAV, FLAC and
OGG through soundfile. A file is decoded once on upload so that a corrupt file is refused
there, not when a block first reads it.
"""

from __future__ import annotations

import io
import re
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

from .constants import MAX_IMAGE_PIXELS
from .errors import InvalidInput
from .model import MediaFields

IMAGE_EXTS = {
    ".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm",
}
AUDIO_EXTS = {".wav", ".flac", ".ogg", ".oga"}
SUPPORTED = IMAGE_EXTS | AUDIO_EXTS


_ORIENTATION_TAG = 0x0112
_SWAPPING_ORIENTATIONS = {5, 6, 7, 8}


class MediaInfo(MediaFields):
    """A probed file: its MIME type, extension and media fields."""

    media_type: str
    ext: str

    @property
    def is_audio(self) -> bool:
        return self.frequency is not None


def probe(data: bytes, name: str, max_pixels: int = MAX_IMAGE_PIXELS) -> MediaInfo:
    """Identify and fully validate a media file. Raises InvalidInput with the reason."""
    ext = Path(name).suffix.lower()
    if ext in IMAGE_EXTS:
        return _probe_image(data, ext, max_pixels)
    if ext in AUDIO_EXTS:
        return _probe_audio(data, ext)
    shown = ext or "(no extension)"
    raise InvalidInput(
        f"unsupported file type {shown}: expected an image ({', '.join(sorted(IMAGE_EXTS))}) "
        f"or audio ({', '.join(sorted(AUDIO_EXTS))})"
    )


def _pillow() -> Any:
    """Pillow, with its global decompression-bomb guard off: labelblocks applies its own limit
    (``max_pixels``) from the header before decoding, and images it stored must decode later
    (the guard would refuse one past twice Pillow's default even when the limit was raised)."""
    from PIL import Image

    Image.MAX_IMAGE_PIXELS = None
    return Image


def _probe_image(data: bytes, ext: str, max_pixels: int) -> MediaInfo:
    from PIL import UnidentifiedImageError

    Image = _pillow()
    if not data:
        raise InvalidInput("empty file: expected image data")
    check = "reading the header"
    try:
        img = Image.open(io.BytesIO(data))
        if img.format == "PNG":
            # every chunk's CRC and the closing IEND chunk (decoding alone checks neither)
            check = "checking the PNG chunks"
            img.verify()
            check = "reading the header"
            img = Image.open(io.BytesIO(data))
        w, h = img.size
        if w * h > max_pixels:
            raise InvalidInput(f"image too large: {w}x{h} is {w * h:,} pixels, the limit is {max_pixels:,} "
                               "(raise it with --max-pixels)")
        orientation = img.getexif().get(_ORIENTATION_TAG, 1)
        fmt = img.format or ext.lstrip(".").upper()
        if fmt == "JPEG":
            # decode at reduced scale: still reads every byte (catches truncation), 8x cheaper
            img.draft(img.mode, (max(1, w // 8), max(1, h // 8)))
        check = "decoding the pixels"
        img.load()
    except InvalidInput:
        raise
    except UnidentifiedImageError:
        raise InvalidInput(f"not a readable image (expected {ext} data)") from None
    except (OSError, SyntaxError, ValueError, struct.error) as e:
        raise InvalidInput(f"corrupt image: {check} failed: {e}") from None
    if w <= 0 or h <= 0:
        raise InvalidInput(f"image has no pixels ({w}x{h})")
    if orientation in _SWAPPING_ORIENTATIONS:
        w, h = h, w
    mime = Image.MIME.get(fmt, f"image/{fmt.lower()}")
    return MediaInfo(media_type=mime, ext=ext, chart_type="image", width=w, height=h)


# libsndfile's log line for a WAV whose data chunk is shorter than its header says
_WAV_CUT = re.compile(r"^data : (?P<declared>\d+) \(should be (?P<actual>\d+)\)", re.MULTILINE)
_WAV_SIZE_UNKNOWN = 0x7FFFFFFF  # sizes from here up are placeholders of writers that stream
_AUDIO_MIME = {".wav": "audio/wav", ".flac": "audio/flac", ".ogg": "audio/ogg", ".oga": "audio/ogg"}


def _probe_audio(data: bytes, ext: str) -> MediaInfo:
    import soundfile as sf

    if not data:
        raise InvalidInput("empty file: expected audio data")
    try:
        with sf.SoundFile(io.BytesIO(data)) as f:
            rate = f.samplerate
            # read through the whole stream so a truncated or corrupt file is caught now
            frames = 0
            for block in f.blocks(blocksize=65536, dtype="float32", always_2d=True):
                frames += block.shape[0]
            # libsndfile reads a cut-off WAV up to where it ends, and says so only in its log
            short = _WAV_CUT.search(f.extra_info)
    except (sf.LibsndfileError, RuntimeError, ValueError, TypeError) as e:
        raise InvalidInput(f"corrupt or unreadable audio: {_audio_error(e)}") from None
    if short and int(short["actual"]) < int(short["declared"]) < _WAV_SIZE_UNKNOWN:
        raise InvalidInput(f"truncated audio: the WAV header announces {short['declared']} bytes of samples, "
                           f"the file holds {short['actual']}")
    if frames == 0:
        raise InvalidInput("audio has no samples")
    interval = 1000.0 / rate
    return MediaInfo(
        media_type=_AUDIO_MIME[ext],
        ext=ext,
        chart_type="chart",
        frequency=float(rate),
        values_count=frames,
        interval_ms=interval,
        total_length_ms=frames * interval,
    )


def open_image(data: bytes, min_side: int | None = None) -> Any:
    """Decode an image with EXIF orientation applied, as RGB (handles grayscale, palette,
    RGBA and 16-bit images). ``min_side``: a JPEG may be decoded at a reduced scale (its
    DCT scaling: up to 8x cheaper) as long as both sides stay at least this long, for a model
    that resizes it smaller anyway."""
    from PIL import Image, ImageOps

    _pillow()
    opened = Image.open(io.BytesIO(data))
    if min_side and opened.format == "JPEG":
        opened.draft("RGB", (min_side, min_side))
    img: Image.Image = ImageOps.exif_transpose(opened)
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        import numpy as np

        arr = np.asarray(img, dtype=np.float32)
        hi = float(arr.max()) or 1.0
        img = Image.fromarray((arr * (255.0 / hi)).clip(0, 255).astype("uint8"), mode="L")
    if img.mode in ("RGBA", "LA") or (img.mode == "P" and "transparency" in img.info):
        img = img.convert("RGBA")
        bg = Image.new("RGB", img.size, (255, 255, 255))
        bg.paste(img, mask=img.getchannel("A"))
        return bg
    return img.convert("RGB")


def _audio_error(e: Exception) -> str:
    """libsndfile's reason, without soundfile's "Error opening <_io.BytesIO object at 0x...>:"."""
    import soundfile as sf

    return str(e.error_string) if isinstance(e, sf.LibsndfileError) else str(e)


@contextmanager
def open_audio(file: BinaryIO) -> Iterator[Any]:
    """``file`` as a soundfile.SoundFile, to read in blocks (a long recording need not be in
    memory at once). Audio libsndfile cannot read raises ValueError with its reason (without
    soundfile's repr of the file object)."""
    import soundfile as sf

    try:
        f = sf.SoundFile(file)
    except sf.LibsndfileError as e:
        raise ValueError(f"not audio that libsndfile reads (WAV, FLAC, OGG, ...): {_audio_error(e)}") from None
    with f:
        yield f


def read_audio(data: bytes, mono: bool = True) -> tuple[Any, int]:
    """(float32 samples, sample rate): mixed to mono, or [values, channels] with ``mono=False``.
    Audio libsndfile cannot read raises ValueError, as :func:`open_audio`."""
    import numpy as np

    with open_audio(io.BytesIO(data)) as f:
        samples, rate = f.read(dtype="float32", always_2d=True), f.samplerate
    if not mono:
        return samples, int(rate)
    return np.ascontiguousarray(samples.mean(axis=1)), int(rate)
