"""The audioset block on a tiny random-initialised AST checkpoint with a few AudioSet classes."""

from __future__ import annotations

import io
import itertools
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from labelblocks.blocks import BlockContext, SampleFailure, SampleInput
from labelblocks.errors import BlockError
from labelblocks.model import Sample, SampleChange, StructuredLabel
from labelblocks_audioset.block import (
    AudioSet,
    merge_adjacent,
    parse_labels,
    resolve_labels,
    segments,
    window_starts,
)
from tests.blocks.tiny_models import AUDIOSET_CLASSES, make_ast
from tests.conftest import Cli, corrupt_stored_copy, make_audio

LABELS = "Speech\nbark (dog)\nMusic"


@pytest.fixture(scope="module")
def ast(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_ast(tmp_path_factory.mktemp("ast"))


def wav(seconds: float, rate: int = 16000, channels: int = 1, seed: int = 0, fmt: str = "WAV") -> bytes:
    import soundfile as sf

    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    tone = np.sin(2 * np.pi * (200 + 100 * seed) * t)[:, None] * 0.3
    data = (tone + rng.standard_normal((len(t), channels)) * 0.05).astype("float32")
    buf = io.BytesIO()
    sf.write(buf, data, rate, format=fmt)
    return buf.getvalue()


def run_block(model: Path, clips: list[bytes], **params: Any) -> tuple[list[Any], BlockContext]:
    import soundfile as sf

    # the block's own defaults (parameters.json) for everything not given
    args = AudioSet.options({"audioset-labels": LABELS, "model": str(model), "device": "cpu", "precision": "fp32",
                             "batch-size": 3, **params})
    AudioSet.check_args(args)
    inputs = []
    for i, data in enumerate(clips):
        try:
            info = sf.info(io.BytesIO(data))
            extra = {"frequency": info.samplerate, "values_count": info.frames}
        except Exception:
            extra = {}
        inputs.append(SampleInput(Sample(id=i + 1, filename=f"{i}.wav", chart_type="chart", **extra),
                                  lambda d=data: d))
    block = AudioSet()
    ctx = BlockContext()
    block.setup(args, ctx)
    try:
        return list(block.label(inputs, args, ctx)), ctx
    finally:
        block.teardown()


# -- tiling ---------------------------------------------------------------------------------------

@pytest.mark.parametrize(("n", "rate", "win", "stride", "expected"), [
    (16000, 16000, 2000, 2000, [(0, 15999)]),                      # shorter than a window: one window
    (32000, 16000, 2000, 2000, [(0, 31999)]),                      # exactly one window
    (48000, 16000, 2000, 2000, [(0, 31999), (32000, 47999)]),      # the tail is its own window
    (80000, 16000, 2000, 1000, [(0, 15999), (16000, 31999), (32000, 47999), (48000, 79999)]),  # overlap
    (80000, 16000, 1000, 2000, [(0, 31999), (32000, 63999), (64000, 79999)]),  # gaps: segments still tile
    (8000, 8000, 250, 250, [(i * 2000, i * 2000 + 1999) for i in range(4)]),
    (1, 44100, 2000, 2000, [(0, 0)]),
    (44101, 44100, 1000, 1000, [(0, 44099), (44100, 44100)]),
])
def test_windows_tile_the_sample(n: int, rate: int, win: int, stride: int, expected: list[tuple[int, int]]) -> None:
    _, starts = window_starts(n, rate, win, stride)
    assert segments(starts, n) == expected


@settings(max_examples=300, deadline=None)
@given(n=st.integers(1, 500_000), rate=st.sampled_from([8000, 11025, 16000, 22050, 44100, 48000]),
       win=st.integers(10, 5000), stride=st.integers(10, 5000))
def test_tiling_property(n: int, rate: int, win: int, stride: int) -> None:
    win_len, starts = window_starts(n, rate, win, stride)
    segs = segments(starts, n)
    assert segs[0][0] == 0 and segs[-1][1] == n - 1
    assert all(a[1] + 1 == b[0] for a, b in itertools.pairwise(segs))  # no overlap, no gap
    assert all(s <= e for s, e in segs)
    assert starts[-1] < n
    stride_len = starts[1] - starts[0] if len(starts) > 1 else None
    if stride_len is not None and stride_len <= win_len:
        assert starts[-1] + win_len >= n  # windows reach the end
        assert starts[-2] + win_len < n  # and there is no window more than needed


def test_merge_adjacent() -> None:
    labs = [StructuredLabel(start_index=a, end_index=b, label=lab)
            for a, b, lab in [(0, 9, "x"), (10, 19, "x"), (20, 29, "y"), (30, 39, "x")]]
    assert [(m.start_index, m.end_index, m.label) for m in merge_adjacent(labs)] == [(0, 19, "x"), (20, 29, "y"),
                                                                                    (30, 39, "x")]


# -- labels of interest ---------------------------------------------------------------------------

ID2LABEL = dict(enumerate(AUDIOSET_CLASSES))


@pytest.mark.parametrize(("text", "expected"), [
    ("Speech", [(0, "Speech")]),
    ("speech\nBARK (dog)\n# note\n\nbird vocalization, bird call, bird song (bird)",
     [(0, "speech"), (2, "dog"), (7, "bird")]),
    ("Music ()", [(3, "Music")]),
])
def test_labels_of_interest(text: str, expected: list[tuple[int, str]]) -> None:
    assert resolve_labels(parse_labels(text), ID2LABEL) == expected


@pytest.mark.parametrize(("text", "message"), [
    ("", "expected at least one AudioSet class name"),
    ("Dgo", "'Dgo', did you mean 'Dog'?"),
    ("Speech\nCar alrm (alarm)\nZzzz", "'Car alrm', did you mean 'Car alarm'?; 'Zzzz'"),
    ("Speech (a) (b)", "line 1: expected"),
])
def test_bad_labels(text: str, message: str) -> None:
    with pytest.raises(ValueError) as e:
        resolve_labels(parse_labels(text), ID2LABEL)
    assert message in str(e.value)


def test_unknown_label_fails_before_the_model_loads(ast: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import transformers

    def not_yet(*_: Any, **__: Any) -> Any:
        raise AssertionError("the model was loaded before the labels were checked")

    monkeypatch.setattr(transformers.AutoModelForAudioClassification, "from_pretrained", not_yet)
    monkeypatch.setattr(transformers.AutoFeatureExtractor, "from_pretrained", not_yet)
    args = AudioSet.options({"audioset-labels": "Speech\nDgo", "model": str(ast), "device": "cpu", "precision": "fp32"})
    with pytest.raises(BlockError, match="did you mean 'Dog'"):
        AudioSet().setup(args, BlockContext())


# -- the model --------------------------------------------------------------------------------------

def test_model_folder_under_home(ast: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(ast.parent))
    results, _ = run_block(Path("~") / ast.name, [wav(1.0)])
    assert isinstance(results[0], SampleChange)


def test_scores_match_the_transformers_pipeline(ast: Path) -> None:
    from transformers import pipeline

    clips = [wav(2.0, seed=s) for s in range(3)]
    results, ctx = run_block(ast, clips, **{"audioset-labels": "\n".join(AUDIOSET_CLASSES[:4])})
    pipe = pipeline("audio-classification", model=str(ast))
    for i, data in enumerate(clips):
        import soundfile as sf

        audio, _ = sf.read(io.BytesIO(data), dtype="float32")
        theirs = {r["label"]: r["score"] for r in pipe(audio, top_k=len(AUDIOSET_CLASSES), function_to_apply="sigmoid")}
        (window,) = ctx.records[i + 1]["windows"]
        for name, score in window["scores"].items():
            assert score == pytest.approx(theirs[name], abs=1e-4)
        best = max(AUDIOSET_CLASSES[:4], key=lambda n: theirs[n])
        assert results[i].structured_labels[0].label == (best if theirs[best] >= 0.2 else "other")


@pytest.mark.parametrize("seconds", [0.02, 0.5, 2.0, 12.0])  # shorter than a frame ... longer than the model's input
def test_batched_features_equal_the_extractor(ast: Path, seconds: float) -> None:
    from transformers import AutoFeatureExtractor

    from labelblocks_audioset.block import BatchedFbank

    extractor = AutoFeatureExtractor.from_pretrained(ast)
    assert BatchedFbank.supports(extractor)
    rng = np.random.default_rng(3)
    n = max(400, int(seconds * 16000))  # the extractor itself needs one whole frame
    audio = (rng.standard_normal((3, n)) * 0.2).astype("float32")
    theirs = extractor(list(audio), sampling_rate=16000, return_tensors="np")["input_values"]
    ours = BatchedFbank(extractor, "cpu")(audio).numpy()
    assert ours.shape == theirs.shape
    assert np.abs(ours - theirs).max() < 1e-4
    assert BatchedFbank(extractor, "cpu")(audio[:, :100]).shape == (3, extractor.max_length, extractor.num_mel_bins)


def test_bf16_scores_stay_within_002_of_fp32(ast: Path) -> None:
    clips = [wav(5.0, seed=s) for s in range(3)]
    labels = {"audioset-labels": "\n".join(AUDIOSET_CLASSES)}
    _, fp32 = run_block(ast, clips, precision="fp32", **labels)
    _, bf16 = run_block(ast, clips, precision="bf16", **labels)
    compared = 0
    for sid in fp32.records:
        for wa, wb in zip(fp32.records[sid]["windows"], bf16.records[sid]["windows"], strict=True):
            for name in set(wa["scores"]) & set(wb["scores"]):
                assert abs(wa["scores"][name] - wb["scores"][name]) <= 0.02
                compared += 1
    assert compared >= 9 * 3


def _has_cuda() -> bool:
    import torch

    return bool(torch.cuda.is_available())


@pytest.mark.skipif(not _has_cuda(), reason="needs a CUDA GPU")
def test_gpu_run_matches_the_cpu(ast: Path) -> None:
    """On a GPU (pinned staging, copies that do not block, overlapping batches, float32
    features) every window's scores are the CPU's, within float32 rounding."""
    clips = [wav(s % 5 + 0.5, seed=s) for s in range(12)]
    labels = {"audioset-labels": "\n".join(AUDIOSET_CLASSES), "batch-size": 4}
    _, cpu = run_block(ast, clips, device="cpu", **labels)
    _, gpu = run_block(ast, clips, device="cuda", **labels)
    assert cpu.records.keys() == gpu.records.keys()
    compared = 0
    for sid in cpu.records:
        for wa, wb in zip(cpu.records[sid]["windows"], gpu.records[sid]["windows"], strict=True):
            assert (wa["startIndex"], wa["endIndex"]) == (wb["startIndex"], wb["endIndex"])
            for name in set(wa["scores"]) & set(wb["scores"]):  # the top 3 may swap a near tie
                assert wb["scores"][name] == pytest.approx(wa["scores"][name], abs=2e-3)
                compared += 1
    assert compared >= 2 * sum(len(r["windows"]) for r in cpu.records.values())


def test_windows_renames_other_label_and_records(ast: Path) -> None:
    clips = [wav(7.0, seed=1), wav(0.5, seed=2)]
    results, ctx = run_block(ast, clips, **{"win-stride-ms": 1000})
    long, short = results
    assert [(x.start_index, x.end_index) for x in long.structured_labels] == (
        [(k * 16000, k * 16000 + 15999) for k in range(5)] + [(80000, 111999)])
    assert [(x.start_index, x.end_index) for x in short.structured_labels] == [(0, 7999)]
    assert {x.label for x in long.structured_labels} <= {"Speech", "dog", "Music", "other"}
    assert long.metadata == {"labeled_by": str(ast), "audioset_labels": "Speech, Bark, Music"}
    assert ctx.usage == {"windows": 7}
    w0 = ctx.records[1]["windows"][0]
    assert set(w0["scores"]) == {"Speech", "Bark", "Music"} and w0["label"] == long.structured_labels[0].label
    # every window below the threshold: all other; above 0: never other
    everything_other, _ = run_block(ast, clips, **{"min-confidence": 1.0})
    assert {x.label for r in everything_other for x in r.structured_labels} == {"other"}
    never_other, _ = run_block(ast, clips, **{"min-confidence": 0.0, "merge-adjacent": True})
    labs = never_other[0].structured_labels
    assert "other" not in {x.label for x in labs}
    assert labs[0].start_index == 0 and labs[-1].end_index == 111999
    assert all(a.label != b.label and a.end_index + 1 == b.start_index for a, b in itertools.pairwise(labs))


def test_stereo_8khz_formats_and_bad_audio(ast: Path) -> None:
    clips = [wav(3.0, rate=8000, channels=2), wav(2.5, rate=44100, fmt="FLAC"), wav(2.5, rate=22050, fmt="OGG"),
             b"RIFF\x00\x00\x00\x00WAVEfmt broken", wav(0.0)]
    results, _ = run_block(ast, clips)
    assert [(x.start_index, x.end_index) for x in results[0].structured_labels] == [(0, 15999), (16000, 23999)]
    assert results[1].structured_labels[-1].end_index == int(2.5 * 44100) - 1
    assert results[2].structured_labels[-1].end_index == int(2.5 * 22050) - 1
    assert isinstance(results[3], SampleFailure) and "cannot read the audio" in results[3].error
    assert isinstance(results[4], SampleFailure) and "empty" in results[4].error


def test_one_model_forward_per_batch_of_windows(ast: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    real = AudioSet.launch

    def counted(self: AudioSet, windows: list[np.ndarray]) -> Any:
        calls.append(len(windows))
        return real(self, windows)

    monkeypatch.setattr(AudioSet, "launch", counted)
    results, _ = run_block(ast, [wav(5.0, seed=s) for s in range(4)], **{"batch-size": 4})  # 3 windows each
    assert calls == [4, 4, 4] and all(isinstance(r, SampleChange) for r in results)


@pytest.mark.parametrize(("rate", "channels"), [(44100, 2), (8000, 1), (16000, 3)])
def test_audio_read_in_blocks_equals_reading_it_whole(rate: int, channels: int) -> None:
    """Mixed to mono and resampled a block at a time (memory holds the result only): the same
    values as reading the whole file, mixing and resampling it at once."""
    import soxr

    from labelblocks.media import open_audio, read_audio
    from labelblocks_audioset.block import read_resampled

    data = wav(3.3, rate=rate, channels=channels, fmt="FLAC")
    whole, _ = read_audio(data)
    expected = soxr.resample(whole, rate, 16000) if rate != 16000 else whole
    with open_audio(io.BytesIO(data)) as f:
        got, src, frames = read_resampled(f, 16000, block_seconds=0.25)
    assert (src, frames) == (rate, len(whole))
    assert got.dtype == np.float32 and len(got) == len(expected)
    assert np.abs(got - expected).max() < 1e-6


def test_decoding_stays_a_few_batches_ahead_of_the_model(ast: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Samples are decoded only a few model batches (and one sample) ahead of the model, so a
    batch of long recordings is never all in memory at once; a sample longer than that bound
    still goes through."""
    from labelblocks_audioset import block as audioset

    lengths = [3, 3, 10, 3, 3, 3, 3, 3, 3, 3]  # windows of 2 s each
    launched: list[int] = []
    behind: list[int] = []  # windows decoded but not yet sent to the model, as each decode starts
    real_launch, real_prepare = AudioSet.launch, AudioSet.prepare

    def slow_launch(self: AudioSet, windows: list[np.ndarray]) -> Any:
        time.sleep(0.01)  # a slow model: without a bound, decoding would run far ahead
        launched.append(len(windows))
        return real_launch(self, windows)

    def counted_prepare(self: AudioSet, inp: SampleInput, values_count: int | None) -> Any:
        behind.append(sum(lengths[: inp.sample.id - 1]) - sum(launched))
        return real_prepare(self, inp, values_count)

    monkeypatch.setattr(AudioSet, "launch", slow_launch)
    monkeypatch.setattr(AudioSet, "prepare", counted_prepare)
    results, _ = run_block(ast, [wav(2.0 * n, seed=i) for i, n in enumerate(lengths)], **{"batch-size": 1})
    assert [len(r.structured_labels) for r in results] == lengths and sum(launched) == sum(lengths)
    assert max(behind) <= audioset.WINDOWS_AHEAD * 1 + max(lengths), behind  # batch-size 1


def test_results_do_not_depend_on_the_batch_size(ast: Path) -> None:
    """Batches overlap (the next is sent before the previous one's scores are read) and a
    sample's windows span batches: every window's scores still reach its own sample."""
    clips = [wav(s % 7 + 0.3, seed=s) for s in range(9)]  # 1 to 4 windows each, 15 in all
    clips[4] = b"not audio"
    labels = {"audioset-labels": "\n".join(AUDIOSET_CLASSES)}
    one, ctx_one = run_block(ast, clips, **labels, **{"batch-size": 1})
    for size in (2, 5, 64):
        other, ctx = run_block(ast, clips, **labels, **{"batch-size": size})
        assert ctx.records == ctx_one.records
        assert [r.model_dump() if isinstance(r, SampleChange) else r.error for r in other] == \
            [r.model_dump() if isinstance(r, SampleChange) else r.error for r in one]
    assert isinstance(one[4], SampleFailure) and sum(len(r["windows"]) for r in ctx_one.records.values()) == 15


# -- end to end -------------------------------------------------------------------------------------

def test_audioset_then_relabel_through_preview_and_run(cli: Cli, tmp_path: Path, ast: Path) -> None:
    make_audio(tmp_path / "au" / "night1.wav", seconds=5, rate=16000)
    make_audio(tmp_path / "au" / "night2.flac", seconds=3, rate=8000, channels=2, seed=1)
    make_audio(tmp_path / "au" / "night3.wav", seconds=1, rate=44100, seed=2)
    broken = make_audio(tmp_path / "au" / "night4.wav", seconds=2, rate=16000, seed=3)
    cli("upload", str(tmp_path / "au"), "--no-label")
    corrupt_stored_copy(cli.project, broken, b"RIFF\x00\x00\x00\x00WAVE broken")
    info = cli.json("blocks", "info", "audioset")
    assert "overlapping windows become consecutive" in info["description"]
    cli("actions", "create", "tags", "--step", "audioset", "-p", f"model={ast}", "-p", "audioset-labels=" + LABELS,
        "-p", "precision=fp32", "-p", "min-confidence=0", "--step", "relabel", "-p", "mapping=dog -> barking",
        "--set-metadata", "ai-labeled=true")
    preview = cli.json("actions", "preview", "tags", "--limit", "2")
    props = cli.json("proposals", "show", str(preview["jobId"]))["proposedChanges"]
    step1 = {p["sampleId"]: p for p in props if p["step"] == 1}
    step2 = {p["sampleId"]: p for p in props if p["step"] == 2}
    assert len(step1) == len(step2) == 2
    assert all(p["record"]["windows"] for p in step1.values())
    for sid, p in step2.items():  # step 2 renamed what step 1 proposed
        before = [x["label"] for x in step1[sid]["proposedChanges"]["structuredLabels"]]
        after = [x["label"] for x in p["proposedChanges"].get("structuredLabels", step1[sid]["proposedChanges"]
                                                                  ["structuredLabels"])]
        assert after == ["barking" if x == "dog" else x for x in before]
    out = cli.json("actions", "run", "tags", expect=1)
    assert out["applied"] == 3 and out["failed"] == 1 and out["cached"] == 4
    for s in cli.json("samples", "list"):
        if s["filename"].startswith("night4"):
            assert not s["structuredLabels"]
            continue
        labs = s["structuredLabels"]
        assert labs[0]["startIndex"] == 0 and labs[-1]["endIndex"] == s["valuesCount"] - 1
        assert all(a["endIndex"] + 1 == b["startIndex"] for a, b in itertools.pairwise(labs))
        assert {x["label"] for x in labs} <= {"Speech", "barking", "Music", "other"}
        assert s["metadata"]["labeled_by"] == str(ast) and s["metadata"]["ai-labeled"] == "true"


@pytest.mark.parametrize(("params", "message"), [
    (["audioset-labels="], "parameter 'audioset-labels' (AudioSet labels of interest) is required"),
    (["audioset-labels=# only a comment"], "audioset-labels: expected at least one AudioSet class name"),
    (["win-size-ms=0"], "win-size-ms: expected a positive number"),
    (["min-confidence=1.5"], "min-confidence: expected 0 to 1"),
])
def test_audioset_arguments_checked_when_saved(cli: Cli, params: list[str], message: str) -> None:
    args = [x for p in params for x in ("-p", p)]
    assert message in cli("actions", "create", "bad", "--step", "audioset", *args, expect=1).stderr
