"""The feature extractors labelblocks ships (a plugin like any other, registered by name):

- ``image-embedding``: a transformers vision model's pooled image embedding (CLIP's image
  tower by default: its projected image features; any Hugging Face id or local folder);
- ``audio-embedding``: the Audio Spectrogram Transformer's pooled embedding per window;
- ``audio-spectral``: log-mel band energies per window (numpy, no model).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from typing import Any, ClassVar

import numpy as np

from .accel import (
    autocast,
    decode_workers,
    load_pretrained,
    lowest_priority,
    pick_device,
    pick_precision,
    require_model,
)
from .extractors import FeatureExtractor
from .hookspecs import hookimpl
from .media import open_image, read_audio


def _windows(audio: np.ndarray, size: int) -> list[np.ndarray]:
    """Consecutive windows of ``size`` values (the last may be shorter; a short clip is one)."""
    return [audio[i : i + size] for i in range(0, max(len(audio), 1), size)] or [audio]


def mel_filters(sr: int, n_fft: int, bands: int) -> np.ndarray:
    """Triangular mel filters [bands, n_fft // 2 + 1] (HTK mel scale, 0 Hz to Nyquist)."""
    def mel(f: np.ndarray) -> np.ndarray:
        return 2595.0 * np.log10(1.0 + f / 700.0)

    def hz(m: np.ndarray) -> np.ndarray:
        return 700.0 * (10 ** (m / 2595.0) - 1.0)

    freqs = np.linspace(0, sr / 2, n_fft // 2 + 1)
    edges = hz(np.linspace(mel(np.array(0.0)), mel(np.array(sr / 2)), bands + 2))
    out = np.zeros((bands, freqs.size), dtype=np.float32)
    for b in range(bands):
        lo, mid, hi = edges[b], edges[b + 1], edges[b + 2]
        up = (freqs - lo) / max(mid - lo, 1e-9)
        down = (hi - freqs) / max(hi - mid, 1e-9)
        out[b] = np.clip(np.minimum(up, down), 0, None)
    return out


class AudioSpectral(FeatureExtractor):
    name = "audio-spectral"
    modality = "audio"
    description = "log-mel band energies (25 ms frames, 10 ms hop) averaged per window; no model"
    parameters: ClassVar[dict[str, str]] = {"window-ms": "1000", "bands": "32"}
    batch_size = 64

    def extract(self, batch: Sequence[bytes]) -> list[np.ndarray | Exception]:
        out: list[np.ndarray | Exception] = []
        for data in batch:
            try:
                out.append(self.one(data))
            except Exception as e:  # this file fails alone
                out.append(e)
        return out

    def one(self, data: bytes) -> np.ndarray:
        audio, sr = read_audio(data)
        audio = np.asarray(audio, dtype=np.float32)
        frame, hop = max(8, int(sr * 0.025)), max(1, int(sr * 0.010))
        n_fft = 1 << (frame - 1).bit_length()
        filters = mel_filters(sr, n_fft, int(self.params["bands"]))
        window = np.hanning(frame).astype(np.float32)
        rows = []
        for w in _windows(audio, max(1, int(sr * int(self.params["window-ms"]) / 1000))):
            if w.size < frame:
                w = np.pad(w, (0, frame - w.size))
            starts = np.arange(0, w.size - frame + 1, hop)
            frames = np.stack([w[s : s + frame] for s in starts]) * window
            power = np.abs(np.fft.rfft(frames, n=n_fft)) ** 2
            rows.append(np.log(power @ filters.T + 1e-10).mean(axis=0))
        return np.asarray(rows, dtype=np.float32)


class _TorchExtractor(FeatureExtractor):
    """What the model extractors share: device and precision as the model blocks pick them,
    files decoded in threads ahead, while the model runs (on the CPU, at the lowest priority)."""

    def setup(self) -> None:
        import torch

        require_model(self.params["model"])
        self.device = pick_device(self.params.get("device", "auto"))
        self.precision = pick_precision(self.params.get("precision", "auto"), self.device)
        # on the CPU the model's threads take every core: the decoding threads run at the
        # lowest priority, on what the model leaves idle, instead of slowing its threads
        # (measured in benchmarks/anomaly.py); a GPU leaves the cores free
        on_cpu = self.device == "cpu"
        self.pool = ThreadPoolExecutor((os.cpu_count() or 1) if on_cpu else decode_workers(self.device),
                                       initializer=lowest_priority if on_cpu else None)
        torch.set_grad_enabled(False)
        self.load()

    def load(self) -> None:
        raise NotImplementedError

    def decode_all(self, batch: Sequence[bytes], decode: Callable[[bytes], Any]) -> list[Any]:
        def safe(data: bytes) -> Any:
            try:
                return decode(data)
            except Exception as e:
                return e

        return list(self.pool.map(safe, batch))


class ImageEmbedding(_TorchExtractor):
    name = "image-embedding"
    modality = "image"
    description = "a vision model's pooled image embedding (CLIP's projected image features by default)"
    parameters: ClassVar[dict[str, str]] = {"model": "openai/clip-vit-base-patch32", "device": "auto",
                                            "precision": "auto"}
    batch_size = 32

    def load(self) -> None:
        from transformers import AutoImageProcessor, AutoModel

        self.processor = load_pretrained(partial(AutoImageProcessor.from_pretrained, backend="pil"),
                                         self.params["model"], "model")
        self.model = load_pretrained(AutoModel.from_pretrained, self.params["model"], "model").to(self.device).eval()
        size = getattr(self.processor, "size", None)

        def side(name: str) -> Any:
            return size.get(name) if isinstance(size, dict) else getattr(size, name, None)

        # what the processor resizes to: a JPEG is decoded at no smaller a scale
        self.min_side = int(side("shortest_edge") or min(side("height") or 224, side("width") or 224))
        self.steps = pil_steps(self.processor)

    def embed(self, pixels: Any) -> Any:
        if hasattr(self.model, "get_image_features"):  # CLIP-like: the projected image features
            out = self.model.get_image_features(pixel_values=pixels)
            return out if not hasattr(out, "pooler_output") else out.pooler_output
        out = self.model(pixel_values=pixels)
        pooled = getattr(out, "pooler_output", None)
        return pooled if pooled is not None else out.last_hidden_state.mean(dim=1)

    def extract(self, batch: Sequence[bytes]) -> list[np.ndarray | Exception]:
        return self.run(self.prepare(batch))

    def prepare(self, batch: Sequence[bytes]) -> Any:
        """Decoded (in threads) and preprocessed: (per file the image or its error, pixels)."""
        if self.steps is not None:  # the processor's own steps, cheaper: see PilSteps
            decode, to_pixels = self.steps.crop_image, self.steps.pixels
        else:
            decode = partial(open_image, min_side=self.min_side)
            to_pixels = lambda crops: self.processor(images=crops, return_tensors="pt")["pixel_values"]  # noqa: E731
        images = self.decode_all(batch, decode)
        ok = [im for im in images if not isinstance(im, Exception)]
        pixels = to_pixels(ok) if ok else None
        return [e if isinstance(e, Exception) else None for e in images], pixels

    def run(self, prepared: Any) -> list[np.ndarray | Exception]:
        errors, pixels = prepared
        vectors: list[np.ndarray] = []
        if pixels is not None:
            with autocast(self.device, self.precision):
                emb = self.embed(pixels.to(self.device))
            vectors = list(emb.float().cpu().numpy())
        it = iter(vectors)
        return [e if e is not None else next(it)[None, :].astype(np.float32) for e in errors]


@dataclass(frozen=True)
class PilSteps:
    """What a CLIP-like image processor does (resize the shortest edge, centre crop, rescale,
    normalise), done as it does it but cheaper, all in the decoding thread: the image resized
    and cropped by Pillow, then rescaled and normalised in one pass of numpy (the processor
    converts, checks and copies each image at every step). The same pixels: the tests compare
    both."""

    shortest_edge: int
    crop: tuple[int, int]  # (height, width)
    resample: int
    scale: float
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def crop_image(self, data: bytes) -> np.ndarray:
        """One file decoded (a JPEG at a reduced scale where it stays large enough), resized so
        that its shortest edge is ``shortest_edge``, centre-cropped, rescaled and normalised:
        float32 [3, height, width]."""
        img = open_image(data, min_side=self.shortest_edge)
        w, h = img.size
        short, long = (w, h) if w <= h else (h, w)
        new_long = int(self.shortest_edge * long / short)  # as transformers' get_resize_output_image_size
        size = (self.shortest_edge, new_long) if w <= h else (new_long, self.shortest_edge)
        if size != (w, h):
            img = img.resize(size, resample=self.resample)
        ch, cw = self.crop
        top, left = (size[1] - ch) // 2, (size[0] - cw) // 2  # as transformers' center_crop
        x = np.asarray(img.crop((left, top, left + cw, top + ch)), dtype=np.float32) * np.float32(self.scale)
        x -= np.asarray(self.mean, dtype=np.float32)
        x /= np.asarray(self.std, dtype=np.float32)
        return x.transpose(2, 0, 1)

    def pixels(self, crops: Sequence[np.ndarray]) -> Any:
        import torch

        return torch.from_numpy(np.stack(crops))


def pil_steps(processor: Any) -> PilSteps | None:
    """The processor's steps when it is CLIP-like (and nothing else), else None (the processor
    itself is then called)."""
    get = partial(getattr, processor)
    size, crop = get("size", None), get("crop_size", None)

    def field(d: Any, name: str) -> Any:
        return d.get(name) if isinstance(d, dict) else getattr(d, name, None)

    short = field(size, "shortest_edge")
    if not (short and not field(size, "longest_edge") and not field(size, "height")):
        return None
    ch, cw = field(crop, "height"), field(crop, "width")
    expected = {"do_resize": True, "do_center_crop": True, "do_rescale": True, "do_normalize": True}
    if any(get(k, None) is not v for k, v in expected.items()) or get("do_convert_rgb", True) is False:
        return None
    if not (ch and cw and ch <= short and cw <= short) or get("do_pad", False) or get("do_reduce_labels", False):
        return None
    mean, std = get("image_mean", None), get("image_std", None)
    if not (isinstance(mean, (list, tuple)) and len(mean) == 3 and isinstance(std, (list, tuple)) and len(std) == 3):
        return None
    return PilSteps(int(short), (int(ch), int(cw)), int(get("resample", 3)), float(get("rescale_factor")),
                    tuple(map(float, mean)), tuple(map(float, std)))  # type: ignore[arg-type]


class AudioEmbedding(_TorchExtractor):
    name = "audio-embedding"
    modality = "audio"
    description = "the Audio Spectrogram Transformer's pooled embedding per window"
    parameters: ClassVar[dict[str, str]] = {"model": "MIT/ast-finetuned-audioset-10-10-0.4593", "window-ms": "2000",
                                            "device": "auto", "precision": "auto"}
    batch_size = 8

    def load(self) -> None:
        from transformers import ASTModel, AutoFeatureExtractor

        self.fe = load_pretrained(AutoFeatureExtractor.from_pretrained, self.params["model"], "model")
        model: Any = load_pretrained(ASTModel.from_pretrained, self.params["model"], "model")
        self.model = model.to(self.device).eval()

    def extract(self, batch: Sequence[bytes]) -> list[np.ndarray | Exception]:
        import torch

        rate = int(self.fe.sampling_rate)

        def decode(data: bytes) -> list[np.ndarray]:
            audio, sr = read_audio(data)
            audio = np.asarray(audio, dtype=np.float32)
            if sr != rate:  # linear resampling to the model's rate
                n = max(1, round(len(audio) * rate / sr))
                audio = np.interp(np.linspace(0, len(audio) - 1, n), np.arange(len(audio)), audio).astype(np.float32)
            return _windows(audio, max(1, rate * int(self.params["window-ms"]) // 1000))

        decoded = self.decode_all(batch, decode)
        flat = [w for d in decoded if not isinstance(d, Exception) for w in d]
        vectors: list[np.ndarray] = []
        if flat:
            feats = self.fe(flat, sampling_rate=rate, return_tensors="pt")["input_values"].to(self.device)
            with autocast(self.device, self.precision), torch.no_grad():
                vectors = list(self.model(input_values=feats).pooler_output.float().cpu().numpy())
        out: list[np.ndarray | Exception] = []
        k = 0
        for d in decoded:
            if isinstance(d, Exception):
                out.append(d)
            else:
                out.append(np.asarray(vectors[k : k + len(d)], dtype=np.float32))
                k += len(d)
        return out


EXTRACTORS = [ImageEmbedding, AudioEmbedding, AudioSpectral]


@hookimpl
def register_feature_extractors(register: Callable[[type[Any]], Any]) -> None:
    for cls in EXTRACTORS:
        register(cls)

