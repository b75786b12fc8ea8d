"""Actions served as models (``labelblocks serve``): a published version of an action
(``ACTION/VERSION``) answers images sent over HTTP. Models load on first use and stay warm
(their blocks set up once, weights loaded), the least recently used evicted past a limit.
Concurrent requests for one model are batched together into its blocks' ``label()`` calls
(dynamic batching: while requests arrive together, a batch waits at most ``max_delay`` for
company, up to the first block's batch size; a lone request runs at once). Every answered inference is logged, in one transaction per batch, before any of
the batch's answers leaves.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import queue
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .actions import parse_action
from .blocks import Block, BlockContext, SampleInput
from .errors import InvalidInput, NotFound
from .executors.inprocess import label_batch
from .media import MAX_IMAGE_PIXELS, probe
from .model import MAX_INT, Sample, SampleChange, compose
from .plugins import get_registry
from .store import Store
from .store import inferences as log_store

OBJECT_DETECTION, CLASSIFICATION = "object-detection", "classification"
_FORMATS = {"JPEG": ".jpg", "PNG": ".png", "WEBP": ".webp", "BMP": ".bmp", "GIF": ".gif", "TIFF": ".tiff"}


def parse_model_id(model_id: str) -> tuple[str, int | None]:
    """``ACTION/VERSION`` (or ``ACTION``: its latest version)."""
    if not isinstance(model_id, str):
        raise InvalidInput(f"model_id: expected ACTION/VERSION, got {type(model_id).__name__}")
    name, _, version = model_id.strip().partition("/")
    if not name:
        raise InvalidInput(f"model_id: expected ACTION/VERSION, got {model_id!r}")
    if version and (not version.isdigit() or int(version) > MAX_INT):
        raise InvalidInput(f"model_id: the version is a number (ACTION/VERSION), got {model_id!r}")
    return name, int(version) if version else None


def image_sample(data: bytes, max_pixels: int = MAX_IMAGE_PIXELS, index: int = 1) -> Sample:
    """A sample of the image ``data`` (validated as an upload is), not stored."""
    from PIL import Image, UnidentifiedImageError

    if not data:
        raise InvalidInput("the image is empty")
    try:
        with Image.open(io.BytesIO(data)) as im:
            fmt = im.format or ""
    except (UnidentifiedImageError, OSError):
        raise InvalidInput("not a readable image (JPEG, PNG, WebP, BMP, GIF or TIFF expected)") from None
    ext = _FORMATS.get(fmt)
    if ext is None:
        raise InvalidInput(f"unsupported image format {fmt or 'unknown'}")
    info = probe(data, "image" + ext, max_pixels)
    return Sample(id=index, filename=f"inference{ext}", chart_type="image", width=info.width, height=info.height,
                  media_type=info.media_type, content_hash=hashlib.sha256(data).hexdigest())


@dataclass
class Result:
    """One image's answer: the composed change, scores, how long it took, or its error."""

    sample: Sample
    data: bytes
    change: SampleChange | None = None
    error: str | None = None
    confidence: float | None = None  # a label's confidence, where a block recorded one
    inference_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    latency_ms: float = 0.0

    def classes(self) -> list[tuple[str, float]]:
        """(class, confidence) of every prediction: boxes, else the label."""
        if self.change is None:
            return []
        if self.change.bounding_boxes:
            return [(b.label, float(b.score) if b.score is not None else 1.0) for b in self.change.bounding_boxes]
        if self.change.label:
            return [(self.change.label, self.confidence if self.confidence is not None else 1.0)]
        return []


@dataclass
class _Pending:
    sample: Sample
    data: bytes
    key_id: int | None
    future: Future[Result]
    received: float = field(default_factory=time.perf_counter)


class LoadedModel:
    """A model: its blocks set up once, and a worker thread that answers batches."""

    def __init__(self, store: Store, model_id: str,
                 on_logged: Callable[[list[dict[str, Any]], list[Result]], None], max_delay: float = 0.005) -> None:
        from .runner import Runner

        name, version = parse_model_id(model_id)
        self.version, definition = log_store.get_version(store, name, version)
        self.model_id = f"{name}/{self.version}"
        self.action = parse_action(definition)
        runner = Runner(store, get_registry())
        self.plans = runner.plan(self.action)
        self.blocks: list[Block] = []
        self.contexts: list[BlockContext] = []
        self.args = [dict(plan.resolved.values) for plan in self.plans]
        for plan in self.plans:
            cls = plan.block.cls
            if cls.executor != "inprocess":
                raise InvalidInput(f"model {self.model_id}: block {cls.name} runs as a separate program; a model "
                                   "serves in-process blocks only")
            if "image" not in cls.media_kinds():
                raise InvalidInput(f"model {self.model_id}: block {cls.name} does not take images")
            block = cls()
            context = BlockContext(secrets=dict(plan.secrets), preview=False, cache_dir=store.root / "cache",
                                   learned=runner.learned)
            block.setup(self.args[len(self.blocks)], context)
            self.blocks.append(block)
            self.contexts.append(context)
        # classification where every block labels single-label images; boxes otherwise
        single = all("images_single_label" in p.block.cls.operates_on() for p in self.plans)
        self.task = CLASSIFICATION if single else OBJECT_DETECTION
        self.batch_size = max(1, self.blocks[0].batch_size(self.args[0]))
        self.class_ids: dict[str, int] = {}
        self.store, self.on_logged, self.max_delay = store, on_logged, max_delay
        self.queue: queue.Queue[_Pending | None] = queue.Queue()
        self.batches: list[int] = []  # sizes of the batches run (the last 1000)
        self.worker = threading.Thread(target=self._work, name=f"labelblocks-model-{self.model_id}", daemon=True)
        self.worker.start()

    def describe(self) -> dict[str, Any]:
        return {"model_id": self.model_id, "task_type": self.task, "batch_size": self.batch_size,
                "input_height": None, "input_width": None}

    def class_id(self, name: str) -> int:
        return self.class_ids.setdefault(name, len(self.class_ids))

    def submit(self, sample: Sample, data: bytes, key_id: int | None) -> Future[Result]:
        fut: Future[Result] = Future()
        self.queue.put(_Pending(sample, data, key_id, fut))
        return fut

    def close(self) -> None:
        self.queue.put(None)
        for block in self.blocks:
            teardown = getattr(block, "teardown", None)
            if callable(teardown):
                try:
                    teardown()
                except Exception:  # a block that fails to tear down is dropped all the same
                    pass

    def _work(self) -> None:
        while True:
            first = self.queue.get()
            if first is None:
                return
            batch = [first]
            # wait for company only when there is traffic to share with: requests queued now, or
            # a shared last batch (a lone client is not held back by the delay)
            alone = self.queue.empty() and (not self.batches or self.batches[-1] == 1)
            deadline = time.perf_counter() + (0.0 if alone else self.max_delay)
            while len(batch) < self.batch_size:
                left = deadline - time.perf_counter()
                if left <= 0:
                    break
                try:
                    nxt = self.queue.get(timeout=left)
                except queue.Empty:
                    break
                if nxt is None:
                    self.queue.put(None)
                    break
                batch.append(nxt)
            try:
                results = self.run([(p.sample, p.data) for p in batch])
                now = time.time()
                rows = []
                for p, r in zip(batch, results, strict=True):
                    r.latency_ms = (time.perf_counter() - p.received) * 1000
                    rows.append(self._row(r, p.key_id, now))
                self.on_logged(rows, results)  # logged before anything is answered
                for p, r in zip(batch, results, strict=True):
                    p.future.set_result(r)
            except BaseException as e:  # the batch's requests fail; the worker goes on
                for p in batch:
                    if not p.future.done():
                        p.future.set_exception(e)

    def run(self, items: Sequence[tuple[Sample, bytes]]) -> list[Result]:
        """The model's steps over ``items``, each step seeing the earlier ones' changes."""
        self.batches = [*self.batches[-999:], len(items)]
        results = [Result(s.model_copy(update={"id": i + 1}), d) for i, (s, d) in enumerate(items)]
        current = [r.sample for r in results]
        changes: list[list[SampleChange]] = [[] for _ in results]
        for block, plan, args, context in zip(self.blocks, self.plans, self.args, self.contexts, strict=True):
            live = [i for i, r in enumerate(results) if r.error is None]
            if not live:
                break
            inputs = [SampleInput(current[i], functools.partial(bytes, results[i].data)) for i in live]
            context.records.clear()
            outs = label_batch(block, inputs, args, context)
            for i, out in zip(live, outs, strict=True):
                if isinstance(out, SampleChange):
                    changes[i].append(out)
                    current[i] = current[i].with_change(out)
                    rec = context.records.get(current[i].id) or {}
                    conf = rec.get("confidence", rec.get("score"))
                    if isinstance(conf, int | float):
                        results[i].confidence = float(conf)
                else:
                    results[i].error = f"step {plan.index} ({plan.block.name}): {out.error}"
        for r, ch in zip(results, changes, strict=True):
            if r.error is None:
                r.change = compose(ch)
        return results

    def _row(self, r: Result, key_id: int | None, now: float) -> dict[str, Any]:
        classes = r.classes()
        return {"id": r.inference_id, "created_at": now, "model": self.model_id, "latency_ms": r.latency_ms,
                "error": r.error, "classes": json.dumps([c for c, _ in classes]),
                "confidences": json.dumps([round(c, 6) for _, c in classes]), "width": r.sample.width,
                "height": r.sample.height, "content_hash": r.sample.content_hash, "media_type": r.sample.media_type,
                "key_id": key_id, "image_kept": False,
                "change": r.change.model_dump_json(by_alias=True, exclude_none=True) if r.change else "{}"}

    def answer(self, r: Result, task: str | None = None) -> dict[str, Any]:
        """The Roboflow inference server's answer shape for ``task`` (the model's own by default)."""
        base: dict[str, Any] = {"inference_id": r.inference_id, "time": r.latency_ms / 1000,
                                "image": {"width": r.sample.width, "height": r.sample.height}}
        classes = r.classes()
        if (task or self.task) == OBJECT_DETECTION:
            boxes = (r.change.bounding_boxes or []) if r.change else []
            base["predictions"] = [
                {"x": b.x + b.width / 2, "y": b.y + b.height / 2, "width": float(b.width), "height": float(b.height),
                 "confidence": float(b.score) if b.score is not None else 1.0, "class": b.label,
                 "class_id": self.class_id(b.label), "detection_id": str(uuid.uuid4())} for b in boxes]
            return base
        preds = [{"class": c, "class_id": self.class_id(c), "confidence": conf} for c, conf in classes]
        top = preds[0] if preds else {"class": "", "confidence": 0.0}
        return {**base, "predictions": preds, "top": top["class"], "confidence": top["confidence"]}


class ModelPool:
    """The server's warm models, by id, the least recently used evicted past ``max_models``;
    keeps kept images in the project when ``keep_images`` says so."""

    def __init__(self, store: Store, max_models: int = 4, max_delay: float = 0.005, keep_images: str = "off",
                 max_pixels: int = MAX_IMAGE_PIXELS) -> None:
        self.store, self.max_models, self.max_delay, self.max_pixels = store, max_models, max_delay, max_pixels
        self.keep = parse_keep(keep_images)
        self.models: OrderedDict[str, LoadedModel] = OrderedDict()
        self.loading: dict[str, Future[LoadedModel]] = {}  # models being loaded, by key
        self.lock = threading.Lock()

    def get(self, model_id: str, load: bool = True) -> LoadedModel:
        """The model, loaded on first use. A load (seconds for a detector) happens outside the
        pool's lock: the other models answer meanwhile, and concurrent requests for the model
        being loaded wait for that one load."""
        name, version = parse_model_id(model_id)
        with self.lock:
            key = f"{name}/{version}" if version is not None else None
            if key is None:  # the latest version
                key = f"{name}/{log_store.get_version(self.store, name, None)[0]}"
            if key in self.models:
                self.models.move_to_end(key)
                return self.models[key]
            if not load:
                raise NotFound(f"model {key} is not loaded")
            loading = self.loading.get(key)
            if loading is None:
                pending = self.loading[key] = Future()
        if loading is not None:  # another request is loading it
            return loading.result()
        try:
            model = LoadedModel(self.store, key, self._log, self.max_delay)
        except BaseException as e:
            with self.lock:
                del self.loading[key]
            pending.set_exception(e)
            raise
        with self.lock:
            del self.loading[key]
            self.models[key] = model
            while len(self.models) > self.max_models:
                _, old = self.models.popitem(last=False)
                old.close()
        pending.set_result(model)
        return model

    def remove(self, model_id: str) -> None:
        with self.lock:
            name, version = parse_model_id(model_id)
            for key in [k for k in self.models if k == f"{name}/{version}" or (version is None and k.startswith(name + "/"))]:
                self.models.pop(key).close()

    def registry(self) -> list[dict[str, Any]]:
        with self.lock:
            return [m.describe() for m in self.models.values()]

    def close(self) -> None:
        with self.lock:
            for m in self.models.values():
                m.close()
            self.models.clear()

    def _log(self, rows: list[dict[str, Any]], results: list[Result]) -> None:
        """Keep the images worth keeping (first: a logged image is in the project), then log."""
        for row, r in zip(rows, results, strict=True):
            if row["error"] is None and self.keep([c for _, c in r.classes()]):
                self.store.blobs.put(r.sample.content_hash, r.data)
                row["image_kept"] = True
        log_store.log_inferences(self.store, rows)

    def infer(self, model: LoadedModel, images: Sequence[bytes], key_id: int | None) -> list[Result]:
        """Validate every image first (a bad one refuses the request, nothing logged), then
        submit them and wait for their answers."""
        samples = [image_sample(d, self.max_pixels) for d in images]
        futures = [model.submit(s, d, key_id) for s, d in zip(samples, images, strict=True)]
        return [f.result() for f in futures]


def parse_keep(spec: str) -> Callable[[Sequence[float]], bool]:
    """``off`` | ``all`` | ``low-confidence:T`` (images whose best confidence is under T, or
    with no prediction): which inferences keep their image in the project."""
    spec = (spec or "off").strip()
    if spec == "off":
        return lambda confidences: False
    if spec == "all":
        return lambda confidences: True
    if spec.startswith("low-confidence:"):
        try:
            t = float(spec.split(":", 1)[1])
        except ValueError:
            raise InvalidInput(f"--keep-images: expected off, all or low-confidence:T, got {spec!r}") from None
        return lambda confidences: not confidences or max(confidences) < t
    raise InvalidInput(f"--keep-images: expected off, all or low-confidence:T, got {spec!r}")


def stats(rows: Sequence[log_store.Logged], prev: Sequence[log_store.Logged],
          group_by: str | None = None) -> dict[str, Any]:
    """The inference-stats answer: totals for the period and the previous one, per model and
    predicted class, and (``group_by``) the same per value of a custom metadata field."""

    def figures(xs: Sequence[log_store.Logged]) -> dict[str, float]:
        confs = [c for x in xs for c in x.confidences]
        return {"num_inferences": len(xs), "num_errors": sum(1 for x in xs if x.error),
                "avg_confidence": sum(confs) / len(confs) if confs else 0.0,
                "avg_response_time": sum(x.latency_ms for x in xs) / len(xs) if xs else 0.0}

    now, before = figures(rows), figures(prev)
    out: dict[str, Any] = {**now, **{f"prev_{k}": v for k, v in before.items()}}
    per: dict[tuple[str, str], list[float]] = {}
    for x in rows:
        for c, conf in zip(x.classes, x.confidences, strict=False):
            per.setdefault((x.model, c), []).append(conf)
    out["inference_stats"] = [{"model_name": m, "predicted_class": c, "num_predictions": len(v),
                               "avg_confidence": sum(v) / len(v)} for (m, c), v in sorted(per.items())]
    if group_by:
        groups: dict[str, list[log_store.Logged]] = {}
        prev_groups: dict[str, list[log_store.Logged]] = {}
        for x in rows:
            groups.setdefault(x.metadata.get(group_by, "(no value)"), []).append(x)
        for x in prev:
            prev_groups.setdefault(x.metadata.get(group_by, "(no value)"), []).append(x)
        out["group_by"] = group_by
        out["groups"] = [{"value": v, **figures(xs), **{f"prev_{k}": w for k, w in figures(prev_groups.get(v, [])).items()}}
                         for v, xs in sorted(groups.items())]
    return out


def write_plot(rows: Sequence[Any], by: str | None, start: float, end: float, path: Path) -> None:
    """Requests and average confidence per time bin, one line per group (atomically)."""
    import os

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    bins = np.linspace(start, end, 25)
    groups: dict[str, list[Any]] = {}
    for r in rows:
        groups.setdefault(r.metadata.get(by, "(no value)") if by else "all", []).append(r)
    fig, (a, b) = plt.subplots(2, 1, figsize=(9, 6), sharex=True)
    from datetime import datetime

    centers = [datetime.fromtimestamp(t) for t in (bins[:-1] + bins[1:]) / 2]
    for name, xs in sorted(groups.items()):
        t = np.array([x.created_at for x in xs])
        conf = np.array([max(x.confidences) if x.confidences else 0.0 for x in xs])
        idx = np.clip(np.digitize(t, bins) - 1, 0, len(bins) - 2)
        counts = np.bincount(idx, minlength=len(bins) - 1)
        sums = np.bincount(idx, weights=conf, minlength=len(bins) - 1)
        a.plot(centers, counts, marker=".", label=name)  # markers: a lone busy bin shows too
        b.plot(centers, np.where(counts > 0, sums / np.maximum(counts, 1), np.nan), marker="o", label=name)
    a.set_ylabel("requests")
    b.set_ylabel("average best confidence")
    a.legend(fontsize=8)
    a.set_title(f"inferences{' by ' + by if by else ''}")
    fig.autofmt_xdate()
    tmp = path.with_name(f".{path.name}.tmp")
    fig.savefig(tmp, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    os.replace(tmp, path)


def publish_action(store: Store, name: str, block: str | None = None, params: dict[str, str] | None = None) -> int:
    """Freeze the saved action ``name`` as its next version; or, with ``block``, that single
    block with ``params`` as the model ``name`` (no action is saved)."""
    from .actions import Action, Step, get_action, validate_steps

    if block is None:
        return log_store.publish(store, name, get_action(store, name).to_json())
    try:
        get_action(store, name)
    except NotFound:
        pass
    else:
        raise InvalidInput(f"{name} is a saved action: publish it without --step, or name the model otherwise")
    try:
        action = Action(name=name, steps=[Step(block=block, parameters=params or {})])
    except ValueError as e:
        raise InvalidInput(f"model name {name!r}: {e}") from None
    validate_steps(action, get_registry())
    return log_store.publish(store, name, action.to_json())


__all__ = ["CLASSIFICATION", "OBJECT_DETECTION", "LoadedModel", "ModelPool", "Result", "image_sample",
           "parse_keep", "parse_model_id", "publish_action", "stats"]
