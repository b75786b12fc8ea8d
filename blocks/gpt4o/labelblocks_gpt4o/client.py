"""A Chat Completions client built for labeling: retries with backoff and jitter that honour
Retry-After and the rate-limit reset headers, timeouts, a strict JSON answer schema with a
JSON-mode fallback, tolerant answer parsing, and a response cache in the project.

The API key is sent only in the Authorization header; it never appears in an error message,
a log line or the cache. The cache's key is a hash of everything that determines an answer:
the endpoint, the key's identity (a hash of it) and the request body; it stores only the answer
text the blocks read, with any secret in it redacted. Identical requests in flight at the same
time are sent once (the others wait for its answer).
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import sqlite3
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

import requests

from labelblocks import redact

DEFAULT_BASE_URL = "https://api.openai.com/v1"
RETRY_STATUSES = {408, 409, 429, 500, 502, 503, 504}
MAX_BACKOFF_S = 30.0


class ApiError(Exception):
    """A request that failed for good (after retries, or a 4xx that retrying cannot fix)."""


class AuthError(ApiError):
    """The server refused the API key (401 / 403): no other request can succeed."""


class UnreadableAnswer(Exception):
    """The model answered, but not with the JSON asked for."""

    def __init__(self, message: str, raw: str) -> None:
        super().__init__(message)
        self.raw = raw


@dataclass
class Usage:
    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    retries: int = 0
    cache_hits: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, **counts: int) -> None:
        with self.lock:
            for k, v in counts.items():
                setattr(self, k, getattr(self, k) + v)

    def as_dict(self) -> dict[str, int]:
        return {k: getattr(self, k) for k in ("requests", "prompt_tokens", "completion_tokens", "retries", "cache_hits")}


class ResponseCache:
    """Answers by request hash, in a SQLite file of the project (one row per answer, each
    write its own transaction), shared by the threads of a run."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        fresh = not path.exists()
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("CREATE TABLE IF NOT EXISTS answers (key TEXT PRIMARY KEY, answer TEXT NOT NULL, "
                         "created REAL NOT NULL)")
        if fresh:
            path.chmod(0o600)  # answers are the project's data: readable by its owner only

    def get(self, key: str) -> dict[str, Any] | None:
        with self._lock:
            row = self._db.execute("SELECT answer FROM answers WHERE key = ?", (key,)).fetchone()
        return json.loads(row[0]) if row else None

    def put(self, key: str, answer: dict[str, Any]) -> None:
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO answers VALUES (?, ?, ?)", (key, json.dumps(answer), time.time()))

    def close(self) -> None:
        with self._lock:
            self._db.close()


def retry_delay(response: requests.Response | None, attempt: int, rng: random.Random) -> float:
    """Seconds to wait before retry ``attempt`` (1-based): Retry-After or the rate-limit reset
    headers when the server sent them, else exponential backoff with full jitter."""
    if response is not None:
        h = response.headers
        if h.get("retry-after-ms"):
            try:
                return min(MAX_BACKOFF_S, float(h["retry-after-ms"]) / 1000)
            except ValueError:
                pass
        if h.get("retry-after"):
            v = h["retry-after"].strip()
            try:
                return min(MAX_BACKOFF_S, max(0.0, float(v)))
            except ValueError:
                try:
                    return min(MAX_BACKOFF_S, max(0.0, parsedate_to_datetime(v).timestamp() - time.time()))
                except (TypeError, ValueError):
                    pass
        resets = [parse_duration(h[k]) for k in ("x-ratelimit-reset-requests", "x-ratelimit-reset-tokens")
                  if h.get(k) and (h.get(k.replace("reset", "remaining")) in (None, "0"))]
        resets = [r for r in resets if r is not None]
        if resets:
            return min(MAX_BACKOFF_S, max(resets))
    return rng.uniform(0, min(MAX_BACKOFF_S, 0.5 * 2 ** (attempt - 1)))


_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")


def parse_duration(text: str) -> float | None:
    """OpenAI's reset durations (``1s``, ``6m0s``, ``20ms``, ``1h2m3.5s``) in seconds."""
    parts = _DURATION.findall(text.strip())
    if not parts:
        return None
    unit = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
    return sum(float(v) * unit[u] for v, u in parts)


def parse_answer(text: str) -> dict[str, Any]:
    """The JSON object in a model's answer: plain, fenced (```json ... ```) or amid chatter."""
    candidates = [text.strip()]
    candidates += re.findall(r"```(?:json)?\s*(.*?)```", text, flags=re.S)
    start, end = text.find("{"), text.rfind("}")
    if 0 <= start < end:
        candidates.append(text[start : end + 1])
    for c in candidates:
        try:
            value = json.loads(c)
        except ValueError:
            continue
        if isinstance(value, dict):
            return value
    raise UnreadableAnswer("the answer is not a JSON object", text)


class ChatClient:
    """POST {base_url}/chat/completions with retries; one instance per run, shared by threads."""

    def __init__(self, *, api_key: str, model: str, base_url: str = DEFAULT_BASE_URL, timeout: float = 60.0,
                 max_retries: int = 5, concurrency: int = 4, cache: ResponseCache | None = None,
                 sleep: Callable[[float], None] = time.sleep, seed: int | None = None) -> None:
        self.url = base_url.rstrip("/") + "/chat/completions"
        # who is asking, for the cache key: a hash of the key, never the key
        self.key_identity = hashlib.sha256(b"labelblocks gpt4o api key\0" + api_key.encode()).hexdigest()[:32]
        self._in_flight: dict[str, Future[str]] = {}
        self._in_flight_lock = threading.Lock()
        self.model = model
        self.timeout = timeout
        self.max_retries = max_retries
        self.cache = cache
        self.usage = Usage()
        self._key = api_key
        self._sleep = sleep
        self._rng = random.Random(seed)
        self._json_mode_only = False  # set when the server refuses json_schema response formats
        self._refused: AuthError | None = None  # once the key is refused, nothing more is sent
        self.session = requests.Session()
        adapter = requests.adapters.HTTPAdapter(pool_connections=1, pool_maxsize=max(1, concurrency))
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)

    def close(self) -> None:
        self.session.close()

    def _redact(self, text: str) -> str:
        return redact(text, [self._key]) if self._key else text

    def ask_json(self, messages: list[dict[str, Any]], schema_name: str, schema: dict[str, Any],
                 max_tokens: int = 300) -> tuple[dict[str, Any], str, bool]:
        """(parsed answer, raw answer text, whether it came from the cache)."""
        body: dict[str, Any] = {"model": self.model, "messages": messages, "max_tokens": max_tokens, "temperature": 0}
        key = hashlib.sha256(json.dumps({"url": self.url, "key": self.key_identity, "body": body, "schema": schema},
                                        sort_keys=True).encode()).hexdigest()
        if self.cache is not None:
            hit = self.cache.get(key)
            if hit is not None:
                self.usage.add(cache_hits=1)
                return parse_answer(hit["content"]), hit["content"], True
        with self._in_flight_lock:
            pending = self._in_flight.get(key)
            if pending is None:
                mine: Future[str] = Future()
                self._in_flight[key] = mine
        if pending is not None:  # the same request is on its way: its answer is this one's
            content = pending.result()
            self.usage.add(cache_hits=1)
            return parse_answer(content), content, True
        try:
            # an answer that echoes the key (a misbehaving server or proxy) is stored, parsed and
            # used without it
            content = self._redact(self._complete(body, schema_name, schema))
            parsed = parse_answer(content)  # raises UnreadableAnswer; nothing is cached then
            if self.cache is not None:
                self.cache.put(key, {"content": content})
            mine.set_result(content)
        except BaseException as e:
            mine.set_exception(e)
            raise
        finally:
            with self._in_flight_lock:
                del self._in_flight[key]
        return parsed, content, False

    def _complete(self, body: dict[str, Any], schema_name: str, schema: dict[str, Any]) -> str:
        strict = {"type": "json_schema", "json_schema": {"name": schema_name, "strict": True, "schema": schema}}
        body = {**body, "response_format": {"type": "json_object"} if self._json_mode_only else strict}
        attempt = 0
        while True:
            if self._refused is not None:
                raise self._refused
            response: requests.Response | None = None
            try:
                response = self.session.post(self.url, json=body, timeout=self.timeout,
                                             headers={"Authorization": f"Bearer {self._key}"})
            except (requests.Timeout, requests.ConnectionError) as e:
                problem = f"{type(e).__name__}: {self._redact(str(e))[:200]}"
            else:
                if response.status_code == 200:
                    data = response.json()
                    usage = data.get("usage") or {}
                    self.usage.add(requests=1, prompt_tokens=int(usage.get("prompt_tokens", 0)),
                                   completion_tokens=int(usage.get("completion_tokens", 0)))
                    try:
                        return str(data["choices"][0]["message"]["content"] or "")
                    except (KeyError, IndexError, TypeError):
                        raise UnreadableAnswer("the response has no choices[0].message.content",
                                               self._redact(response.text[:2000])) from None
                text = self._redact(response.text[:500])
                if (response.status_code == 400 and body["response_format"]["type"] == "json_schema"
                        and "response_format" in text):
                    # an OpenAI-compatible server without structured outputs: JSON mode instead
                    self._json_mode_only = True
                    body = {**body, "response_format": {"type": "json_object"}}
                    continue
                if response.status_code in (401, 403):
                    self._refused = AuthError(f"HTTP {response.status_code} from {self.url}: the API key was refused "
                                              f"(set it with `labelblocks secrets set OPENAI_API_KEY`): {text}")
                    raise self._refused
                if response.status_code not in RETRY_STATUSES:
                    raise ApiError(f"HTTP {response.status_code} from {self.url}: {text}")
                problem = f"HTTP {response.status_code}: {text[:200]}"
            attempt += 1
            if attempt > self.max_retries:
                raise ApiError(f"gave up after {self.max_retries} retries: {problem}")
            self.usage.add(retries=1)
            self._sleep(retry_delay(response, attempt, self._rng))
