"""Device, precision and model loading shared by the model blocks (OWL-ViT, AudioSet).

torch and transformers are imported inside the functions: importing this module costs
nothing, so the CLI stays light.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import sys
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from .blocks import Block, BlockContext
from .errors import BlockError

T = TypeVar("T")

DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
_HUB_ID = re.compile(r"[\w.-]+(/[\w.-]+)?")  # a Hugging Face id: name or namespace/name


@functools.cache
def cpu_has_fast_bf16() -> bool:
    """True where the CPU multiplies bf16 matrices natively (AMX or AVX512-BF16): there a
    bf16 matrix product runs several times faster than fp32."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    flags: set[str] = set()
    for line in text.splitlines():
        if line.startswith("flags"):
            flags.update(line.split(":", 1)[1].split())
            break
    return bool(flags & {"avx512_bf16", "amx_bf16"})


def pick_device(choice: str) -> str:
    """``auto`` / ``cpu`` / ``cuda`` to the device to run on; asking for a GPU that is not
    there is an error, not a silent fallback."""
    import torch

    if choice not in DEVICES:
        raise BlockError(f"device: expected one of {', '.join(DEVICES)}, got {choice!r}")
    if choice == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if choice == "cuda" and not torch.cuda.is_available():
        raise BlockError("device cuda: no CUDA GPU is available to torch here; use --device cpu or auto")
    return choice


def pick_precision(choice: str, device: str) -> str:
    """``auto`` becomes bf16 where the hardware runs it fast (CUDA GPUs with bf16, CPUs with
    AMX or AVX512-BF16) and fp32 elsewhere."""
    import torch

    if choice not in PRECISIONS:
        raise BlockError(f"precision: expected one of {', '.join(PRECISIONS)}, got {choice!r}")
    if choice != "auto":
        return choice
    if device.startswith("cuda"):
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "bf16" if cpu_has_fast_bf16() else "fp32"


def autocast(device: str, precision: str) -> contextlib.AbstractContextManager[Any]:
    """The autocast context for ``precision`` (fp32: none). Weights stay fp32; matrix
    products run in reduced precision, normalisations and softmax in fp32."""
    import torch

    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.split(":")[0], dtype=dtype)


def load_pretrained(load: Callable[..., T], model: str, what: str = "model") -> T:
    """``load(model)`` (a ``from_pretrained``): from a local folder or the Hugging Face cache
    first, downloading only when it is in neither (and the hub is not offline). "Not found"
    becomes one clear message that names the model and says how to provide it.
    transformers' own loading bar is off: the runner shows progress."""
    import huggingface_hub
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    local = Path(model).expanduser()
    if not local.exists() and not _HUB_ID.fullmatch(model):  # a path, not an id of the hub
        raise BlockError(f"{what} {model!r}: no such folder (pass a folder with the model's files, "
                         f"or a Hugging Face id such as namespace/name)")
    try:
        return load(str(local) if local.exists() else model, local_files_only=True)
    except (OSError, ValueError) as e:
        if local.exists():
            raise BlockError(f"cannot load {what} from the folder {model}: {_first_line(e)}") from None
        reason = e
    if not huggingface_hub.constants.HF_HUB_OFFLINE:
        unreachable = hub_unreachable(huggingface_hub.constants.ENDPOINT, model)
        if unreachable:
            reason = OSError(f"the Hugging Face hub ({huggingface_hub.constants.ENDPOINT}) cannot be reached: "
                             f"{unreachable}")
        else:
            try:
                return load(model)
            except (OSError, ValueError) as e:
                reason = e
    raise _not_found(model, what, _first_line(reason))


def _not_found(model: str, what: str, reason: str) -> BlockError:
    return BlockError(
        f"{what} {model!r} was not found: it is neither a local folder nor in the Hugging Face cache, "
        f"and it could not be downloaded. Download it where there is network "
        f"(`hf download {model}`, then copy ~/.cache/huggingface, or set HF_HOME) or pass a local "
        f"folder with the model's files (-p {what}=/path/to/model). ({reason})")


def require_model(model: str, what: str = "model") -> None:
    """Fail at once, before a block imports its (heavy) model libraries, when ``model`` is
    neither a local folder nor in the Hugging Face cache and cannot be downloaded: offline
    (``HF_HUB_OFFLINE``), or the hub not answering within HUB_PROBE_SECONDS."""
    local = Path(model).expanduser()
    if local.exists():
        return
    if not _HUB_ID.fullmatch(model):
        raise BlockError(f"{what} {model!r}: no such folder (pass a folder with the model's files, "
                         f"or a Hugging Face id such as namespace/name)")
    import huggingface_hub

    if isinstance(huggingface_hub.try_to_load_from_cache(model, "config.json"), str):
        return
    if huggingface_hub.constants.HF_HUB_OFFLINE:
        raise _not_found(model, what, "offline: HF_HUB_OFFLINE is set")
    unreachable = hub_unreachable(huggingface_hub.constants.ENDPOINT, model)
    if unreachable:
        raise _not_found(model, what, f"the Hugging Face hub ({huggingface_hub.constants.ENDPOINT}) cannot be "
                                      f"reached: {unreachable}")


HUB_PROBE_SECONDS = 3.0


def hub_unreachable(endpoint: str, model: str, timeout: float = HUB_PROBE_SECONDS) -> str | None:
    """Why ``model`` cannot be downloaded from the hub at ``endpoint`` (no answer within
    ``timeout`` seconds, or an answer that it is not there), or None when it can be tried.
    Asked once before a download: offline, the hub client's own retries with backoff take
    minutes before they give up."""
    import requests

    try:
        r = requests.head(f"{endpoint.rstrip('/')}/api/models/{model}", timeout=timeout, allow_redirects=True)
    except requests.RequestException as e:
        return f"{type(e).__name__} within {timeout:g} s"
    if r.status_code < 400 or r.status_code in (401, 403):  # there (a gated model needs HF_TOKEN: tried)
        return None
    return f"it answered HTTP {r.status_code} for {model}"


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0][:300] if text else type(e).__name__


def lowest_priority() -> None:
    """Run the calling thread at the lowest priority (Linux: a thread's own nice value 19), so
    that it uses only what other threads leave idle: a thread that decodes the next inputs
    while a model's threads use every core then takes nothing from them. Elsewhere, nothing."""
    import threading

    with contextlib.suppress(OSError, AttributeError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)


def decode_workers(device: str) -> int:
    """Threads that decode and preprocess inputs: one on the CPU, where the model's own
    threads need the cores; on a GPU the cores are free, and one thread cannot feed it."""
    if not device.startswith("cuda"):
        return 1
    return max(1, min(8, (os.cpu_count() or 2) - 1))


class ModelBlock(Block):
    """Base of blocks that run a torch model: the ``device``, ``precision`` and ``batch-size``
    parameters, autocast, and one background thread that decodes the next inputs while the
    model runs. ``batch-size`` is what goes through the model at once; the runner hands the
    block ``runner_batch_factor`` times as many samples per batch (and commits per batch)."""

    runner_batch_factor: ClassVar[int] = 8

    @classmethod
    def check_args(cls, args: Mapping[str, Any]) -> None:
        if int(args.get("batch-size") or cls.default_batch_size) < 1:
            raise ValueError(f"batch-size: expected at least 1, got {args.get('batch-size')}")

    def batch_size(self, args: Mapping[str, Any]) -> int:
        return max(1, int(args.get("batch-size") or self.default_batch_size)) * self.runner_batch_factor

    def setup(self, args: Mapping[str, Any], context: BlockContext) -> None:
        """Chooses device and precision and starts the decoding thread; subclasses load their
        model after calling this."""
        self.device = pick_device(str(args.get("device") or "auto"))
        self.precision = pick_precision(str(args.get("precision") or "auto"), self.device)
        self.micro_batch = max(1, int(args.get("batch-size") or self.default_batch_size))
        self.pool = ThreadPoolExecutor(max_workers=decode_workers(self.device), thread_name_prefix=f"{self.name}-decode")

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        return autocast(self.device, self.precision)

    def teardown(self) -> None:
        pool = getattr(self, "pool", None)
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
