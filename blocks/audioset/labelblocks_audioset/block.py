"""The `audioset` block: AudioSet tags for windows of audio, as structured labels.

- The labels of interest are checked against the model's own class names in ``setup``, before
  any audio is read; an unknown name suggests the closest valid ones.
- Audio (WAV / FLAC / OGG, any rate and channel count) is read a block at a time, mixed to
  mono and resampled with soxr to the model's rate (:func:`read_resampled`) in a background
  thread while the model runs, a few model batches ahead of it (``WINDOWS_AHEAD``) and one
  sample: memory holds a few recordings at the model's rate, not a whole batch of them. The
  AST's log-mel features of a whole model batch are computed at once on the model's device
  (:class:`BatchedFbank`).
- Windows from all samples of a batch go through the model together, ``batch-size`` at a time.
  On a GPU the next model batch is queued before the previous one's scores are read
  (:meth:`AudioSet.launch`): the host builds labels and stages the next batch while the GPU
  runs.
- Windows are placed in value indices of the sample itself; :func:`segments` turns them into
  structured labels that tile the sample exactly (no overlap, no gap, the last one ending at
  valuesCount - 1).
"""

from __future__ import annotations

import difflib
import math
import re
from collections import deque
from collections.abc import Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from labelblocks import (
    BlockContext,
    BlockError,
    ModelBlock,
    Sample,
    SampleChange,
    SampleFailure,
    SampleInput,
    StructuredLabel,
    with_provenance,
)

DEFAULT_MODEL = "MIT/ast-finetuned-audioset-10-10-0.4593"
RECORD_TOP = 3  # scores of the best classes of interest kept per window in the job's record
WINDOWS_AHEAD = 4  # model batches of windows decoded ahead of the model (and always one sample)

_LINE = re.compile(r"^(?P<name>[^()]+?)\s*(?:\((?P<new>[^()]*)\))?$")


def parse_labels(text: str) -> list[tuple[str, str]]:
    """``name (new label)`` lines to (AudioSet name, label to write)."""
    out: list[tuple[str, str]] = []
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        m = _LINE.match(line)
        if not m:
            raise ValueError(f"line {n}: expected `AudioSet class name` or `name (new label)`, got {raw!r}")
        name = m["name"].strip()
        new = (m["new"] or "").strip() or name
        out.append((name, new))
    if not out:
        raise ValueError("expected at least one AudioSet class name, got none")
    return out


def resolve_labels(wanted: Sequence[tuple[str, str]], id2label: Mapping[int, str]) -> list[tuple[int, str]]:
    """(class index, label to write) for each wanted name, matched case-insensitively against
    the model's classes. Unknown names raise ValueError suggesting the closest valid names."""
    by_lower = {name.lower(): idx for idx, name in id2label.items()}
    out: list[tuple[int, str]] = []
    unknown: list[str] = []
    for name, new in wanted:
        idx = by_lower.get(name.lower())
        if idx is None:
            close = difflib.get_close_matches(name.lower(), list(by_lower), n=3, cutoff=0.5)
            hint = (", did you mean " + " or ".join(repr(id2label[by_lower[c]]) for c in close) + "?") if close else ""
            unknown.append(f"{name!r}{hint}")
        else:
            out.append((int(idx), new))
    if unknown:
        raise ValueError(f"not a class of the model: {'; '.join(unknown)} "
                         f"(`labelblocks blocks info audioset` explains the format; the model has {len(id2label)} classes)")
    return out


def window_starts(n_values: int, rate: float, win_ms: float, stride_ms: float) -> tuple[int, list[int]]:
    """(window length, window starts) in value indices of a sample of ``n_values`` values at
    ``rate`` Hz. A sample shorter than one window is one window; otherwise windows start every
    stride until one reaches the end (the last may run past it: the model hears silence there).
    With a stride longer than the window, the audio between windows is not heard."""
    win = max(1, round(win_ms * rate / 1000))
    stride = max(1, round(stride_ms * rate / 1000))
    if n_values <= win:
        return win, [0]
    count = math.ceil((n_values - win) / stride) + 1
    # with a stride longer than the window the last start could fall past the end
    return win, [k * stride for k in range(count) if k * stride < n_values]


def segments(starts: Sequence[int], n_values: int) -> list[tuple[int, int]]:
    """Inclusive (start, end) segments that tile 0..n_values-1: each window's segment runs from
    its start to the next window's start - 1; the last runs to the end."""
    ends = [*starts[1:], n_values]
    return [(s, e - 1) for s, e in zip(starts, ends, strict=True)]


def merge_adjacent(labels: Sequence[StructuredLabel]) -> list[StructuredLabel]:
    out: list[StructuredLabel] = []
    for lab in labels:
        if out and out[-1].label == lab.label and out[-1].end_index + 1 == lab.start_index:
            out[-1] = out[-1].model_copy(update={"end_index": lab.end_index})
        else:
            out.append(lab)
    return out


@dataclass
class _Prepared:
    spans: list[tuple[int, int]]
    windows: list[np.ndarray]  # each window's audio (BatchedFbank computes features), or its features


def read_resampled(f: Any, rate: int, block_seconds: float = 30.0) -> tuple[np.ndarray, int, int]:
    """(mono float32 audio at ``rate``, the file's own rate, its number of values), read from
    the soundfile ``f`` a block at a time: each block is mixed to mono and resampled (soxr,
    streaming: the same values as resampling the whole) before the next is read, so memory
    holds the result only, not the file's channels decoded at its own rate."""
    import soxr

    src = int(f.samplerate)
    stream = soxr.ResampleStream(src, rate, 1, dtype="float32") if src != rate else None
    parts: list[np.ndarray] = []
    frames = 0
    for block in f.blocks(blocksize=max(1, int(block_seconds * src)), dtype="float32", always_2d=True):
        frames += len(block)
        mono = block.mean(axis=1, dtype=np.float32)
        parts.append(stream.resample_chunk(mono) if stream is not None else mono)
    if stream is not None:
        parts.append(stream.resample_chunk(np.zeros(0, np.float32), last=True))
    return (np.concatenate(parts) if parts else np.zeros(0, np.float32)), src, frames


@dataclass
class _InFlight:
    """A batch's scores on their way to the host: ``done`` is the CUDA event recorded after
    their copy was queued (None on the CPU, where they are there already)."""

    scores: Any  # a host tensor
    done: Any = None

    def result(self) -> np.ndarray:
        if self.done is not None:
            self.done.synchronize()
        return self.scores.numpy()  # type: ignore[no-any-return]


class BatchedFbank:
    """The AST feature extractor's log-mel filter bank (Kaldi-style: 25 ms frames every 10 ms,
    DC removal, pre-emphasis 0.97, Hann window, 512-point FFT, power, Kaldi mel bins, log;
    then padded or cut to ``max_length`` frames and normalised), computed for a whole batch of
    windows at once with torch on the model's device. The extractor computes it window by
    window, frame by frame: on a GPU that, not the model, was the bottleneck (5.8 ms a window
    against 1.1 ms for the model's forward on an H100)."""

    FRAME, HOP, NFFT, PRE, FLOOR = 400, 160, 512, 0.97, 1.192092955078125e-07

    def __init__(self, extractor: Any, device: str) -> None:
        import torch
        from transformers.audio_utils import mel_filter_bank, window_function

        self.dtype = torch.float32 if device.startswith("cuda") else torch.float64
        rate = int(extractor.sampling_rate)
        mel = mel_filter_bank(num_frequency_bins=self.NFFT // 2 + 1, num_mel_filters=int(extractor.num_mel_bins),
                              min_frequency=20, max_frequency=rate // 2, sampling_rate=rate, norm=None,
                              mel_scale="kaldi", triangularize_in_mel_space=True)
        self.mel = torch.as_tensor(mel, dtype=self.dtype, device=device)  # [257, mel bins]
        self.window = torch.as_tensor(window_function(self.FRAME, "hann", periodic=False), dtype=self.dtype,
                                      device=device)
        self.max_length = int(extractor.max_length)
        self.normalize = bool(extractor.do_normalize)
        self.mean, self.std = float(extractor.mean), float(extractor.std)
        self.device = device

    @staticmethod
    def supports(extractor: Any) -> bool:
        return type(extractor).__name__ == "ASTFeatureExtractor"

    def __call__(self, audio: Any) -> Any:
        """[windows, values] of audio (an array, or a tensor) -> [windows, max_length, mel bins]
        features (a tensor on the device)."""
        import torch

        x = torch.as_tensor(audio, device=self.device).to(self.dtype)
        if x.shape[1] < self.FRAME:  # a window shorter than one frame is one frame, padded with silence
            x = torch.nn.functional.pad(x, (0, self.FRAME - x.shape[1]))
        frames = x.unfold(1, self.FRAME, self.HOP)  # [W, F, 400]
        frames = frames - frames.mean(dim=-1, keepdim=True)
        frames = torch.cat([frames[..., :1] * (1 - self.PRE), frames[..., 1:] - self.PRE * frames[..., :-1]], dim=-1)
        power = torch.fft.rfft(frames * self.window, n=self.NFFT).abs() ** 2  # [W, F, 257]
        fbank = torch.clamp(power @ self.mel, min=self.FLOOR).log()  # [W, F, mel bins]
        n = fbank.shape[1]
        if n < self.max_length:
            fbank = torch.nn.functional.pad(fbank, (0, 0, 0, self.max_length - n))
        fbank = fbank[:, : self.max_length]
        if self.normalize:
            fbank = (fbank - self.mean) / (self.std * 2)
        return fbank.float()


class AudioSet(ModelBlock):
    name = "audioset"
    parameters = Path(__file__).with_name("parameters.json")
    version = "1"
    default_batch_size = 8
    runner_batch_factor = 4  # samples per runner batch for each window of a model batch

    @classmethod
    def threshold_parameters(cls, parameters: Mapping[str, str], key: str, value: float) -> dict[str, str] | None:
        return {"min-confidence": f"{value:g}"} if key == "min-confidence" else None

    @classmethod
    def check_args(cls, args: Mapping[str, Any]) -> None:
        try:
            parse_labels(args["audioset-labels"])
        except ValueError as e:
            raise ValueError(f"audioset-labels: {e}") from None
        for param in ("win-size-ms", "win-stride-ms"):
            if args[param] < 1:
                raise ValueError(f"{param}: expected a positive number of milliseconds, got {args.get(param)}")
        conf = args["min-confidence"]
        if not 0 <= conf <= 1:
            raise ValueError(f"min-confidence: expected 0 to 1, got {conf}")
        if not args["other-label"].strip():
            raise ValueError("other-label: expected a label, got an empty string")
        super().check_args(args)

    def setup(self, args: Mapping[str, Any], context: BlockContext) -> None:
        from labelblocks import load_pretrained, require_model

        self.model_id = str(args.get("model") or DEFAULT_MODEL)
        require_model(self.model_id)  # before the heavy imports
        from transformers import AutoFeatureExtractor, AutoModelForAudioClassification

        # typed options, resolved against parameters.json (its defaults are the only ones)
        self.win_ms = float(args["win-size-ms"])
        self.stride_ms = float(args["win-stride-ms"])
        self.min_conf = args["min-confidence"]
        self.other = args["other-label"]
        self.merge = args["merge-adjacent"]
        wanted = parse_labels(args["audioset-labels"])
        # the model's classes first (config only): a misspelt name fails before any heavy work
        from transformers import AutoConfig

        config = load_pretrained(AutoConfig.from_pretrained, self.model_id, "model")
        try:
            self.classes = resolve_labels(wanted, {int(k): v for k, v in config.id2label.items()})
        except ValueError as e:
            raise BlockError(f"audioset-labels: {e}") from None
        self.interest = np.array([idx for idx, _ in self.classes])
        self.names = [new for _, new in self.classes]
        self.class_names = [str(config.id2label[idx]) for idx, _ in self.classes]
        self.labels_text = ", ".join(config.id2label[idx] for idx, _ in self.classes)
        super().setup(args, context)
        self.extractor = load_pretrained(AutoFeatureExtractor.from_pretrained, self.model_id, "model")
        self.rate = int(self.extractor.sampling_rate)
        self.fbank = BatchedFbank(self.extractor, self.device) if BatchedFbank.supports(self.extractor) else None
        model = load_pretrained(AutoModelForAudioClassification.from_pretrained, self.model_id, "model")
        self.model = model.to(self.device).eval()

    def cache_key(self, args: Mapping[str, Any]) -> str:
        return f"audioset-1:{args.get('model')}:{args.get('precision')}"

    # -- audio -> features (background thread) ------------------------------------------------

    def prepare(self, inp: SampleInput, values_count: int | None) -> _Prepared | SampleFailure:
        from labelblocks import open_audio

        try:
            with inp.open() as file, open_audio(file) as f:
                x, rate, frames = read_resampled(f, self.rate)
        except ValueError as e:  # what libsndfile does not read
            return SampleFailure(f"cannot read the audio: {e}")
        except Exception as e:
            return SampleFailure(f"cannot read the audio: {type(e).__name__}: {e}")
        n = values_count or frames
        if frames == 0 or n == 0:
            return SampleFailure("the audio is empty")
        _, starts = window_starts(n, rate, self.win_ms, self.stride_ms)
        ratio = self.rate / rate
        length = round(self.win_ms * self.rate / 1000)  # the same for every sample: windows stack into one batch
        wins = []
        for s in starts:  # views of the audio; a window past the end is padded with silence
            w = x[round(s * ratio) : round(s * ratio) + length]
            wins.append(w if len(w) == length else np.pad(w, (0, length - len(w))))
        if self.fbank is not None:  # features are computed per model batch, on the model's device
            return _Prepared(segments(starts, n), wins)
        feats = self.extractor(wins, sampling_rate=self.rate, return_tensors="np")["input_values"]
        return _Prepared(segments(starts, n), list(feats))

    def windows_of(self, sample: Sample) -> int:
        """How many windows a sample has (an estimate of 1 where its length is unknown)."""
        if not sample.values_count or not sample.frequency:
            return 1
        return len(window_starts(sample.values_count, sample.frequency, self.win_ms, self.stride_ms)[1])

    # -- the model ----------------------------------------------------------------------------

    def launch(self, windows: Sequence[np.ndarray]) -> _InFlight:
        """Starts the model on a batch of windows (audio, or features where the extractor is
        not the AST's); its ``result()`` is the per-class probabilities (sigmoid: AudioSet is
        multi-label). It returns without waiting for the model on a GPU: the host stages the
        batch in pinned memory, copies it in and the scores out without blocking, so the
        next batch is prepared and queued while this one runs. On the CPU it runs here."""
        import torch

        cuda = self.device.startswith("cuda")
        staged = torch.empty((len(windows), *windows[0].shape), dtype=torch.float32, pin_memory=cuda)
        np.stack(windows, out=staged.numpy())
        with torch.inference_mode():
            x = staged.to(self.device, non_blocking=True)
            if self.fbank is not None:
                x = self.fbank(x)
            with self.autocast():
                logits = self.model(input_values=x).logits
            probs = torch.sigmoid(logits.float())
            if not cuda:
                return _InFlight(probs, None)
            host = torch.empty(probs.shape, dtype=probs.dtype, pin_memory=True)
            host.copy_(probs, non_blocking=True)
            done = torch.cuda.Event()
            done.record()
            return _InFlight(host, done)

    def label(
        self, batch: Sequence[SampleInput], args: Mapping[str, Any], context: BlockContext
    ) -> Sequence[SampleChange | SampleFailure]:
        items = list(batch)
        samples = [inp.sample for inp in items]  # read in this thread; the decoder reads only files
        out: dict[int, SampleChange | SampleFailure] = {}  # by sample position
        spans: dict[int, list[tuple[int, int]]] = {}
        scores: dict[int, list[np.ndarray]] = {}
        queue: deque[tuple[int, np.ndarray]] = deque()  # (sample position, one window), not yet sent to the model
        running: list[tuple[list[int], _InFlight]] = []  # at most one batch runs while the next is queued
        # Samples are decoded ahead of the model by at most WINDOWS_AHEAD model batches of
        # windows, and always one sample ahead: memory holds a few long recordings, not a batch's.
        todo = deque(range(len(items)))
        decoding: deque[tuple[int, Future[_Prepared | SampleFailure], int]] = deque()
        ahead = self.micro_batch * WINDOWS_AHEAD

        def decode_more() -> None:
            held = len(queue) + sum(n for _, _, n in decoding)
            while todo and (not decoding or held < ahead):
                pos = todo.popleft()
                n = self.windows_of(samples[pos])
                decoding.append((pos, self.pool.submit(self.prepare, items[pos], samples[pos].values_count), n))
                held += n

        def collect() -> None:
            positions, flight = running.pop()
            for pos, probs in zip(positions, flight.result(), strict=True):
                scores[pos].append(probs)
                if len(scores[pos]) == len(spans[pos]):  # the sample's last window
                    out[pos] = self.change(samples[pos], spans.pop(pos), scores.pop(pos), context)

        def send(k: int) -> None:
            sent = [queue.popleft() for _ in range(k)]
            flight = self.launch([w for _, w in sent])
            if running:  # this batch is queued on the device: now read the previous one's scores
                collect()
            running.append(([pos for pos, _ in sent], flight))
            decode_more()

        decode_more()
        while decoding:
            pos, fut, _ = decoding.popleft()
            p = fut.result()
            if isinstance(p, SampleFailure):
                out[pos] = p
            else:
                spans[pos], scores[pos] = p.spans, []
                queue.extend((pos, w) for w in p.windows)
            decode_more()
            while len(queue) >= self.micro_batch:
                send(self.micro_batch)
        if queue:
            send(len(queue))
        if running:
            collect()
        return [out[pos] for pos in range(len(items))]

    def change(self, sample: Sample, spans: Sequence[tuple[int, int]], probs: Sequence[np.ndarray],
               context: BlockContext) -> SampleChange:
        """A sample's structured labels from its windows' scores; the scores go to the job's record."""
        labels: list[StructuredLabel] = []
        windows: list[dict[str, Any]] = []
        for (start, end), pr in zip(spans, probs, strict=True):
            of_interest = pr[self.interest]
            best = int(np.argmax(of_interest))
            label = self.names[best] if of_interest[best] >= self.min_conf else self.other
            labels.append(StructuredLabel(start_index=start, end_index=end, label=label))
            top = np.argsort(-of_interest, kind="stable")[:RECORD_TOP]
            windows.append({"startIndex": start, "endIndex": end, "label": label,
                            "best": {"label": self.names[best], "score": round(float(of_interest[best]), 4)},
                            "scores": {self.class_names[i]: round(float(of_interest[i]), 4) for i in top}})
        # what `labelblocks evaluate` needs to suggest a min-confidence from these scores alone
        context.records[sample.id] = {"windows": windows, "otherLabel": self.other,
                                      "threshold": {"param": "min-confidence", "value": self.min_conf}}
        context.count("windows", len(spans))
        return SampleChange(
            structured_labels=merge_adjacent(labels) if self.merge else labels,
            metadata=with_provenance(sample, labeled_by=self.model_id, audioset_labels=self.labels_text),
        )
