"""The in-process Block base class.

A block declares its parameters.json and implements :meth:`Block.label`, which receives a
batch of samples (with their media) and the resolved arguments and returns one change per
sample in the proposed-change shape. Choosing samples, overlaying earlier steps, batching,
writing, progress, errors and resume are the runner's job.

Example::

    class Uppercase(Block):
        name = "uppercase"
        parameters = {"version": 1, "type": "ai-action",
                      "info": {"name": "Uppercase labels", "operatesOn": ["images_single_label"]},
                      "parameters": []}

        def label(self, batch, args, context):
            return [SampleChange(label=(s.sample.label or "").upper()) for s in batch]
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, ClassVar

from .model import BoundingBox, Sample, SampleChange, box_iou
from .parameters import ParametersFile, load_parameters, resolve


class SampleInput:
    """One sample as a block sees it: earlier steps' proposals applied, media on demand.
    (The runner passes a subclass that reads a batch's samples only when the block first
    looks at one.)"""

    __slots__ = ("_read", "_sample")

    def __init__(self, sample: Sample, read: Callable[[], bytes]) -> None:
        self._sample = sample
        self._read = read

    @property
    def sample(self) -> Sample:
        return self._sample

    def read_bytes(self) -> bytes:
        return self._read()

    def open(self) -> BinaryIO:
        """The sample's file, to read in pieces: a block that streams a long recording need
        not hold all of it in memory."""
        return io.BytesIO(self.read_bytes())

    def image(self) -> Any:
        """The image as a PIL RGB image, EXIF orientation applied."""
        from .media import open_image

        return open_image(self.read_bytes())

    def audio(self) -> tuple[Any, int]:
        """(mono float32 numpy samples, sample rate)."""
        from .media import read_audio

        return read_audio(self.read_bytes())


@dataclass
class SampleFailure:
    """Return this in place of a change to fail one sample with a message (the run goes on)."""

    error: str
    record: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class CostEstimate:
    """What running a block on some samples would cost, before anything is sent: the
    requests it would make and the tokens they would use (paid blocks)."""

    requests: int
    prompt_tokens: int
    completion_tokens: int

    def to_json(self) -> dict[str, int]:
        return {"requests": self.requests, "promptTokens": self.prompt_tokens,
                "completionTokens": self.completion_tokens}


@dataclass
class BlockContext:
    """What a block may use besides its arguments."""

    secrets: Mapping[str, str] = field(default_factory=dict)
    job_id: int | None = None
    preview: bool = False
    cache_dir: Path | None = None
    # counters the block may add to (shown by `jobs show`): requests, tokens, retries, ...
    usage: dict[str, float] = field(default_factory=dict)
    # per-sample extra data the block wants kept in the job's record (scores, raw answers).
    # `labelblocks evaluate` suggests thresholds from two shapes of it: "near_misses" (boxes
    # under the threshold: [{label, score, x, y, width, height}]), and "windows" ([{startIndex,
    # endIndex, best: {label, score}}]) with "otherLabel" and "threshold": {param, value}
    records: dict[int, dict[str, Any]] = field(default_factory=dict)
    # the project's learned models by id (`labelblocks learn`), for blocks that score with one
    # (the built-in ``anomaly`` block); None where the block does not run in the project's process
    learned: Callable[[int], Any] | None = None

    def count(self, key: str, n: float = 1) -> None:
        self.usage[key] = self.usage.get(key, 0) + n


class Block:
    """Base class of in-process blocks. Subclasses set ``name`` and ``parameters`` (a
    parameters.json as a dict or a path) and implement :meth:`label`."""

    name: ClassVar[str]
    parameters: ClassVar[Mapping[str, Any] | str | Path]
    version: ClassVar[str] = "0"
    default_batch_size: ClassVar[int] = 16
    # --- abilities, declared (the runner reads these; it never probes a block's methods) ---
    # True: the block sees the whole selection in one batch (e.g. grouping across samples); its
    # results depend on the selection, so neither they nor a later step's are reused
    needs_all_samples: ClassVar[bool] = False
    # False: the block's results never depend on its samples (a constant label), so they are
    # reused for every revision of a sample; True: reused only while the sample is unchanged
    # (a block declared True that never looks at its inputs is still recognised at run time)
    reads_samples: ClassVar[bool] = True
    # what of a sample the block's result depends on, and carries over into it (a change that
    # holds the whole metadata read all of it): a set of READ_FIELDS. When declared, a result is
    # reused for any sample whose read fields (as the step sees them, earlier steps' proposals
    # applied) equal those it was computed from, whatever else changed and whatever earlier
    # steps did; None: reused only for the same revision of the sample after the same steps
    reads: ClassVar[frozenset[str] | None] = None
    # True: :meth:`estimate` tells the requests and tokens a run would cost (paid blocks)
    can_estimate: ClassVar[bool] = False
    # how a step of the block runs: "inprocess" (label() in this process) or "external" (a
    # program or container speaking the protocol, see labelblocks.external_blocks)
    executor: ClassVar[str] = "inprocess"
    # what one instance needs on a cluster (``--engine ray``): GPUs (at least this many per
    # actor, or --gpus-per-worker where larger) and memory in MB (0: Ray's default)
    gpus: ClassVar[float] = 0.0
    memory_mb: ClassVar[int] = 0
    # True: the block reads the project itself (its learned models), so its steps run in the
    # project's process whatever the engine
    uses_project: ClassVar[bool] = False

    @classmethod
    @functools.cache
    def spec(cls) -> ParametersFile:
        return load_parameters(cls.parameters, what=f"parameters.json of block {getattr(cls, 'name', cls.__name__)}")

    @classmethod
    def options(cls, values: Mapping[str, Any] | None = None, **given: Any) -> dict[str, Any]:
        """The block's typed options: ``values`` and ``given`` (by parameter name, as strings or
        typed) resolved against its parameters.json, whose defaults, types and choices are the
        only ones (a block reads ``args["min-confidence"]`` and never writes a default again).
        The runner hands a block these already; this is for calling a block directly.

        Raises:
            InvalidInput: an unknown parameter, a wrong type, a value outside a select's list.

        Example:
            >>> AudioSet.options(model="path/to/ast")["min-confidence"]
            0.2
        """
        return resolve(cls.spec(), {**(values or {}), **given}, getattr(cls, "name", cls.__name__)).values

    @classmethod
    def title(cls) -> str:
        return cls.spec().info.name

    @classmethod
    def operates_on(cls) -> list[str]:
        return list(cls.spec().info.operates_on)

    @classmethod
    def media_kinds(cls) -> frozenset[str]:
        """The kinds of sample the block labels ("image", "audio"), from its ``operatesOn``:
        ``images_*`` are images, ``audio`` is audio; none given, or ``other``, means both."""
        ops = cls.operates_on()
        kinds = {"image" for o in ops if o.startswith("images")} | {"audio" for o in ops if o == "audio"}
        return frozenset(("image", "audio") if not ops or "other" in ops or not kinds else kinds)

    @classmethod
    def check_args(cls, args: Mapping[str, Any]) -> None:
        """Check resolved arguments beyond their types (a prompt's grammar, a range); raise
        ValueError with a message naming the parameter. Runs when an action is saved."""

    @classmethod
    def threshold_parameters(cls, parameters: Mapping[str, str], key: str, value: float) -> dict[str, str] | None:
        """The step parameters that set a score threshold: ``key`` is a box label, or a
        parameter the block named in its records; ``value`` the threshold `labelblocks
        evaluate` suggests. None where the block has no such parameter. Used to print the
        `actions set` command that applies a suggestion."""
        return None

    @classmethod
    def threshold_value(cls, parameters: Mapping[str, str], key: str) -> float | None:
        """The score threshold the step's ``parameters`` set for ``key`` (a box label), as
        `labelblocks evaluate` reports it beside its suggestion; None where the block has no
        such threshold."""
        return None

    def setup(self, args: Mapping[str, Any], context: BlockContext) -> None:
        """Called once per run before the first batch: load models here."""

    def batch_size(self, args: Mapping[str, Any]) -> int:
        v = args.get("batch-size") or args.get("batch_size")
        return int(v) if v else self.default_batch_size

    def label(
        self, batch: Sequence[SampleInput], args: Mapping[str, Any], context: BlockContext
    ) -> Sequence[SampleChange | SampleFailure]:
        """Return one change (or SampleFailure) per sample of ``batch``, in order."""
        raise NotImplementedError

    def cache_key(self, args: Mapping[str, Any]) -> str:
        """What, besides the sample and the parameters, the result depends on (a model's
        revision, a prompt file's contents): part of the key under which results are reused."""
        return ""

    @classmethod
    def prepare_run(cls) -> dict[str, str]:
        """Called once when a step of this block is planned to run, before any sample is
        touched: make ready what the block needs (an organization's block fetches its verified
        copy). Returns the secrets the block receives from elsewhere than the user's own (an
        organization's), by name; the runner resolves the others as usual.

        Returns:
            Secret values by environment variable name (by default none).
        """
        return {}

    @classmethod
    def estimate(cls, samples: Sequence[Sample], args: Mapping[str, Any]) -> CostEstimate:
        """What labeling ``samples`` would cost; only for blocks that declare
        ``can_estimate``. Must send nothing."""
        raise NotImplementedError(f"block {getattr(cls, 'name', cls.__name__)} cannot estimate its cost")

    def teardown(self) -> None:
        """Called once after the run."""


# what a block may declare it reads (Block.reads): the media (its content hash), the image's
# size, the label, bounding boxes, structured labels, all metadata, whether it is disabled
READ_FIELDS = frozenset({"content", "dimensions", "label", "boxes", "structured_labels", "metadata", "disabled"})


def input_key(sample: Sample, reads: frozenset[str]) -> str:
    """A digest of what a block that reads ``reads`` sees of ``sample``."""
    parts: dict[str, Any] = {}
    if "content" in reads:
        parts["content"] = sample.content_hash
    if "dimensions" in reads:
        parts["dimensions"] = [sample.width, sample.height, sample.values_count]
    if "label" in reads:
        parts["label"] = sample.label
    if "boxes" in reads:
        parts["boxes"] = [b.to_json() for b in sample.bounding_boxes]
    if "structured_labels" in reads:
        parts["structured_labels"] = [x.to_json() for x in sample.structured_labels]
    if "metadata" in reads:
        parts["metadata"] = sample.metadata
    if "disabled" in reads:
        parts["disabled"] = sample.is_disabled
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:32]


PROVENANCE_SEP = " | "


SAME_OBJECT_IOU = 0.9  # boxes overlapping at least this much are one object


def one_box_per_object(boxes: Sequence[BoundingBox], iou_threshold: float = SAME_OBJECT_IOU
                       ) -> tuple[list[BoundingBox], list[dict[str, Any]]]:
    """One box per object: where several boxes (a zero-shot detector's prompt lines, a
    detector's classes) cover the same object (IoU >= ``iou_threshold``), the best-scoring one
    stays and the others become near misses.

    Args:
        boxes: the detections, each with its ``score`` (None counts as 0).
        iou_threshold: how much two boxes must overlap to be one object.

    Returns:
        The boxes kept (best first), and the others as records ``{label, score, x, y, width,
        height, sameObjectAs}`` (the label of the box kept in their place) for the job's record.

    Example:
        >>> kept, near = one_box_per_object(found)
        >>> context.records[sample.id] = {"near_misses": near}
    """
    order = sorted(boxes, key=lambda b: -(b.score or 0.0))
    kept: list[BoundingBox] = []
    near: list[dict[str, Any]] = []
    for b in order:
        same = next((k for k in kept if box_iou(k, b) >= iou_threshold), None)
        if same is None:
            kept.append(b)
        else:
            near.append({"label": b.label, "score": b.score, "x": b.x, "y": b.y, "width": b.width,
                         "height": b.height, "sameObjectAs": same.label})
    return kept, near


def with_provenance(sample: Sample, **values: str) -> dict[str, str]:
    """The sample's metadata with provenance ``values`` (``labeled_by``, ``prompt``) added: a
    value an earlier step (or run) wrote under the same key is kept and the new one appended
    after PROVENANCE_SEP, once, so every step's provenance stays."""
    md = dict(sample.metadata)
    for key, value in values.items():
        old = md.get(key)
        if not old:
            md[key] = value
        elif value not in old.split(PROVENANCE_SEP):
            md[key] = old + PROVENANCE_SEP + value
    return md


def merged_metadata(sample: Sample, **values: str) -> dict[str, str]:
    """The sample's metadata with ``values`` set: metadata in a change replaces the whole
    dictionary, so blocks that add keys start from this."""
    md = dict(sample.metadata)
    md.update(values)
    return md
