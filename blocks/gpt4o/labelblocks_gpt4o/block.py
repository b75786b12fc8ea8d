"""GPT-4o blocks: image labels, box re-labeling and box validation.

Each block turns a batch of samples into requests (one per image, or one per selected box),
sends them ``concurrency`` at a time through :class:`ChatClient` (retries, cache, usage), and
turns the answers into changes. A request that fails for good, or an answer that cannot be
read, fails its sample (with the raw answer in the error), never the run.
"""

from __future__ import annotations

import base64
import io
import math
import os
import threading
from collections.abc import Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from labelblocks import (
    Block,
    BlockContext,
    BoundingBox,
    CostEstimate,
    MissingSecret,
    Sample,
    SampleChange,
    SampleFailure,
    SampleInput,
    StopJob,
    merged_metadata,
)

from .client import DEFAULT_BASE_URL, ApiError, AuthError, ChatClient, ResponseCache, UnreadableAnswer

HERE = Path(__file__).parent
LABEL_SCHEMA = {"type": "object", "properties": {"label": {"type": "string"}, "reason": {"type": "string"}},
                "required": ["label", "reason"], "additionalProperties": False}
VALID_SCHEMA = {"type": "object", "properties": {"valid": {"type": "boolean"}, "reason": {"type": "string"}},
                "required": ["valid", "reason"], "additionalProperties": False}
SYSTEM = "You label data for a machine learning dataset. Answer only with the JSON object asked for."
SAMPLES_PER_REQUEST_SLOT = 16  # runner batch = concurrency x this: few idle slots at a batch's end
TEXT_TOKENS_PER_CHAR = 0.25
ANSWER_TOKENS = 60
REQUEST_OVERHEAD_TOKENS = 20


def fit(width: int, height: int, detail: str) -> tuple[int, int]:
    """The size an image is sent at: what the detail can use (OpenAI's vision sizing)."""
    if detail == "low":
        s = min(1.0, 512 / max(width, height))
    else:
        s = min(1.0, 2048 / max(width, height))
        short = min(width, height) * s
        if short > 768:
            s *= 768 / short
    return max(1, round(width * s)), max(1, round(height * s))


def image_tokens(width: int, height: int, detail: str) -> int:
    """Prompt tokens an image costs at ``detail`` (auto is costed as high)."""
    if detail == "low":
        return 85
    w, h = fit(width, height, detail)
    return 85 + 170 * math.ceil(w / 512) * math.ceil(h / 512)


def data_url(image: Any, detail: str) -> str:
    """A JPEG data URL of a PIL image, downscaled to what ``detail`` can use."""
    size = fit(image.width, image.height, detail)
    if size != image.size:
        image = image.resize(size, resample=3)
    buf = io.BytesIO()
    image.convert("RGB").save(buf, format="JPEG", quality=90)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()


def split_list(text: Any) -> set[str]:
    return {x.strip().lower() for x in str(text or "").split(",") if x.strip()}


@dataclass
class Request:
    pos: int  # the sample's position in the batch
    messages: list[dict[str, Any]]
    schema_name: str
    schema: dict[str, Any]
    box: int | None = None  # the box's index, for re-labeling


def user_message(prompt: str, image_url: str, detail: str) -> list[dict[str, Any]]:
    return [{"role": "system", "content": SYSTEM},
            {"role": "user", "content": [{"type": "text", "text": prompt},
                                         {"type": "image_url", "image_url": {"url": image_url, "detail": detail}}]}]


def base_url(args: Mapping[str, Any]) -> str:
    """The endpoint a run asks: the base-url parameter, else OPENAI_BASE_URL, else OpenAI's."""
    return args.get("base-url") or os.environ.get("OPENAI_BASE_URL") or DEFAULT_BASE_URL


class Gpt4oBlock(Block):
    """What the three blocks share: the client, concurrency, the cache, usage, estimates."""

    version = "1"
    default_batch_size = 8
    can_estimate = True
    prompt_param = "prompt"

    @classmethod
    def check_args(cls, args: Mapping[str, Any]) -> None:
        # typed options (Block.options): parameters.json holds every default
        if args["concurrency"] < 1:
            raise ValueError(f"concurrency: expected at least 1, got {args['concurrency']}")
        if args["timeout"] <= 0:
            raise ValueError(f"timeout: expected a positive number of seconds, got {args['timeout']}")
        if args["max-retries"] < 0:
            raise ValueError(f"max-retries: expected 0 or more, got {args['max-retries']}")
        if not args[cls.prompt_param].strip():
            raise ValueError(f"{cls.prompt_param}: expected a prompt, got an empty one")

    def batch_size(self, args: Mapping[str, Any]) -> int:
        return max(1, args["concurrency"]) * SAMPLES_PER_REQUEST_SLOT

    def setup(self, args: Mapping[str, Any], context: BlockContext) -> None:
        key = context.secrets.get("OPENAI_API_KEY")
        if not key:
            raise MissingSecret("no OpenAI key: run `labelblocks secrets set OPENAI_API_KEY` or set the environment "
                                "variable OPENAI_API_KEY")
        base = base_url(args)
        self.concurrency = max(1, args["concurrency"])
        self.detail = args["image-quality"]
        cache = ResponseCache(context.cache_dir / "gpt4o-answers.sqlite") if context.cache_dir else None
        self.client = ChatClient(api_key=key, model=args["model"], base_url=base,
                                 timeout=args["timeout"], max_retries=args["max-retries"],
                                 concurrency=self.concurrency, cache=cache)
        self.pool = ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix=f"{self.name}-request")
        self.prepare_pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix=f"{self.name}-encode")
        self._reported = self.client.usage.as_dict()

    def teardown(self) -> None:
        for pool in ("prepare_pool", "pool"):
            if hasattr(self, pool):
                getattr(self, pool).shutdown(wait=True, cancel_futures=True)
        if hasattr(self, "client"):
            self.client.close()
            if self.client.cache is not None:
                self.client.cache.close()

    def cache_key(self, args: Mapping[str, Any]) -> str:
        # results are reusable only from the same endpoint (a preview against one server is no
        # answer of another)
        return f"gpt4o-2:{args.get('model')}:{base_url(args)}"

    # -- what each block does --------------------------------------------------------------------

    def requests_for(self, pos: int, sample: Sample, image: Any, args: Mapping[str, Any]) -> list[Request]:
        raise NotImplementedError

    def change_for(self, sample: Sample, answers: list[tuple[Request, dict[str, Any]]],
                   args: Mapping[str, Any]) -> SampleChange:
        raise NotImplementedError

    # -- the shared loop ---------------------------------------------------------------------------

    def _ask(self, req: Request) -> tuple[dict[str, Any], str] | SampleFailure:
        try:
            parsed, raw, _cached = self.client.ask_json(req.messages, req.schema_name, req.schema)
        except UnreadableAnswer as e:
            return SampleFailure(f"could not read the model's answer ({e}); raw answer: {e.raw[:1000]!r}")
        except AuthError as e:  # every other request would be refused too: stop the job now
            raise StopJob(f"{e}; the job stopped at the first refusal: fix the key, then run the action again "
                          "to resume") from None
        except ApiError as e:
            return SampleFailure(str(e))
        missing = [k for k in req.schema["required"] if k not in parsed]
        if missing:
            return SampleFailure(f"the answer lacks {', '.join(missing)}; raw answer: {raw[:1000]!r}")
        return parsed, raw

    def label(
        self, batch: Sequence[SampleInput], args: Mapping[str, Any], context: BlockContext
    ) -> Sequence[SampleChange | SampleFailure]:
        items = list(batch)
        samples = [inp.sample for inp in items]  # read in this thread; the workers read only files
        results: list[SampleChange | SampleFailure | None] = [None] * len(items)
        asked: list[tuple[Request, Future[tuple[dict[str, Any], str] | SampleFailure]]] = []
        lock = threading.Lock()

        def prepare(pos: int) -> None:
            # decode and encode off the main thread; each request is sent as soon as it is ready
            try:
                image = items[pos].image()
                reqs = self.requests_for(pos, samples[pos], image, args)
            except Exception as e:
                results[pos] = SampleFailure(f"cannot read the image: {type(e).__name__}: {e}")
                return
            with lock:
                asked.extend((r, self.pool.submit(self._ask, r)) for r in reqs)

        list(self.prepare_pool.map(prepare, range(len(items))))
        answers = [(req, fut.result()) for req, fut in sorted(asked, key=lambda x: (x[0].pos, x[0].box or 0))]
        per_sample: dict[int, list[tuple[Request, dict[str, Any]]]] = {}
        for req, ans in answers:
            if isinstance(ans, SampleFailure):
                if results[req.pos] is None:
                    results[req.pos] = ans
                continue
            per_sample.setdefault(req.pos, []).append((req, ans[0]))
        for pos, sample in enumerate(samples):
            if results[pos] is None:
                results[pos] = self.change_for(sample, per_sample.get(pos, []), args)
        now = self.client.usage.as_dict()
        for k, v in now.items():
            if v - self._reported[k]:
                context.count(k, v - self._reported[k])
        self._reported = now
        return [r if r is not None else SampleChange() for r in results]

    # -- estimates -----------------------------------------------------------------------------------

    @classmethod
    def estimate(cls, samples: Sequence[Sample], args: Mapping[str, Any]) -> CostEstimate:
        """Expected requests and tokens for ``samples`` before anything is sent: image tokens
        from each image's size at the chosen detail, text tokens from the prompt's length."""
        detail = args["image-quality"]
        text = REQUEST_OVERHEAD_TOKENS + math.ceil(len(args[cls.prompt_param]) * TEXT_TOKENS_PER_CHAR)
        requests_ = prompt = 0
        for s in samples:
            for w, h in cls.request_images(s, args):
                requests_ += 1
                prompt += text + image_tokens(w, h, detail)
        return CostEstimate(requests=requests_, prompt_tokens=prompt, completion_tokens=requests_ * ANSWER_TOKENS)

    @classmethod
    def request_images(cls, sample: Sample, args: Mapping[str, Any]) -> list[tuple[int, int]]:
        """The (width, height) of each image sent for ``sample``."""
        return [(sample.width or 512, sample.height or 512)]


class ImageLabel(Gpt4oBlock):
    name = "gpt4o-image-label"
    parameters = HERE / "image_label.json"

    def requests_for(self, pos: int, sample: Sample, image: Any, args: Mapping[str, Any]) -> list[Request]:
        return [Request(pos, user_message(str(args["prompt"]), data_url(image, self.detail), self.detail),
                        "label", LABEL_SCHEMA)]

    def change_for(self, sample: Sample, answers: list[tuple[Request, dict[str, Any]]],
                   args: Mapping[str, Any]) -> SampleChange:
        (_, answer), = answers
        label = str(answer["label"]).strip()
        md = merged_metadata(sample, reason=str(answer.get("reason", "")), prompt=str(args["prompt"]))
        if not label or label.lower() in split_list(args.get("disable-labels")):
            return SampleChange(is_disabled=True, metadata=md)
        return SampleChange(label=label, metadata=md)


class BoxRelabel(Gpt4oBlock):
    name = "gpt4o-bbox-relabel"
    parameters = HERE / "bbox_relabel.json"

    @classmethod
    def selected(cls, sample: Sample, args: Mapping[str, Any]) -> list[int]:
        which = split_list(args.get("which-labels"))
        return [i for i, b in enumerate(sample.bounding_boxes) if not which or b.label.lower() in which]

    def requests_for(self, pos: int, sample: Sample, image: Any, args: Mapping[str, Any]) -> list[Request]:
        out = []
        for i in self.selected(sample, args):
            b = sample.bounding_boxes[i]
            crop = image.crop((b.x, b.y, min(image.width, b.x + b.width), min(image.height, b.y + b.height)))
            out.append(Request(pos, user_message(str(args["prompt"]), data_url(crop, self.detail), self.detail),
                               "label", LABEL_SCHEMA, box=i))
        return out

    def change_for(self, sample: Sample, answers: list[tuple[Request, dict[str, Any]]],
                   args: Mapping[str, Any]) -> SampleChange:
        if not answers:
            return SampleChange()
        remove = split_list(args.get("disable-labels"))
        new = {req.box: str(a["label"]).strip() for req, a in answers}
        boxes: list[BoundingBox] = []
        for i, b in enumerate(sample.bounding_boxes):
            if i not in new:
                boxes.append(b)
            elif new[i] and new[i].lower() not in remove:
                boxes.append(b.model_copy(update={"label": new[i]}))
        return SampleChange(bounding_boxes=boxes)

    @classmethod
    def request_images(cls, sample: Sample, args: Mapping[str, Any]) -> list[tuple[int, int]]:
        return [(sample.bounding_boxes[i].width, sample.bounding_boxes[i].height) for i in cls.selected(sample, args)]


class BoxValidate(Gpt4oBlock):
    name = "gpt4o-bbox-validate"
    parameters = HERE / "bbox_validate.json"
    prompt_param = "validation-prompt"

    def requests_for(self, pos: int, sample: Sample, image: Any, args: Mapping[str, Any]) -> list[Request]:
        boxes = "\n".join(f"- {b.label}: x={b.x} y={b.y} width={b.width} height={b.height}"
                          for b in sample.bounding_boxes) or "(no boxes)"
        prompt = (f"Do the bounding boxes of this {image.width}x{image.height} image meet these criteria?\n"
                  f"{args['validation-prompt']}\n\nThe boxes (pixels):\n{boxes}\n"
                  f"Answer valid true or false, with the reason.")
        return [Request(pos, user_message(prompt, data_url(image, self.detail), self.detail), "validation",
                        VALID_SCHEMA)]

    def change_for(self, sample: Sample, answers: list[tuple[Request, dict[str, Any]]],
                   args: Mapping[str, Any]) -> SampleChange:
        (_, answer), = answers
        valid = answer["valid"] is True or str(answer["valid"]).lower() == "true"
        md = merged_metadata(sample, validation="valid" if valid else "invalid", reason=str(answer.get("reason", "")))
        return SampleChange(metadata=md, is_disabled=None if valid else True)
