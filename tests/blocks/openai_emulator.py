"""A real HTTP server on loopback that behaves like the OpenAI Chat Completions API, for the
GPT-4o blocks' tests and benchmark: it checks each request's shape and key, answers per a
script, and injects failures (429 with Retry-After, 5xx, slow answers, non-JSON, fenced JSON,
a server without structured outputs)."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

KEY = "sk-test-0123456789abcdefSECRET"


@dataclass
class Fault:
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    content: str | None = None  # the answer text instead of the scripted one
    body: str | None = None  # the whole response body instead


def default_answer(request: dict[str, Any], image: Any) -> str:
    """label from the image's brightness: bright -> car, dark -> truck, middle -> unsure."""
    import numpy as np

    mean = float(np.asarray(image.convert("L")).mean())
    label = "car" if mean > 150 else "truck" if mean < 100 else "unsure"
    if request["response_format"].get("json_schema", {}).get("name") == "validation":
        return json.dumps({"valid": mean > 120, "reason": f"brightness {mean:.0f}"})
    return json.dumps({"label": label, "reason": f"brightness {mean:.0f}"})


class Emulator:
    def __init__(self, answer: Callable[[dict[str, Any], Any], str] = default_answer,
                 fault: Callable[[int, dict[str, Any]], Fault | None] | None = None, latency: float = 0.0,
                 structured_outputs: bool = True) -> None:
        self.answer = answer
        self.fault = fault
        self.latency = latency
        self.structured_outputs = structured_outputs
        self.lock = threading.Lock()
        self.calls = 0
        self.ok = 0  # answered 200: billed requests
        self.images: Counter[str] = Counter()  # successful answers per image content hash
        self.problems: list[str] = []
        self.in_flight = 0
        self.max_in_flight = 0
        emulator = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # headers and body go out in two writes: without this, Nagle's algorithm holds the
            # body until the client's delayed ACK (40 ms), which no real API server does
            disable_nagle_algorithm = True

            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                emulator.handle(self)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def __enter__(self) -> Emulator:
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _send(self, h: BaseHTTPRequestHandler, status: int, body: str, headers: dict[str, str] | None = None) -> None:
        data = body.encode()
        try:
            h.send_response(status)
            h.send_header("Content-Type", "application/json")
            h.send_header("Content-Length", str(len(data)))
            for k, v in (headers or {}).items():
                h.send_header(k, v)
            h.end_headers()
            h.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (timeout)

    def handle(self, h: BaseHTTPRequestHandler) -> None:
        from PIL import Image

        length = int(h.headers.get("Content-Length", 0))
        raw = h.rfile.read(length)
        with self.lock:
            self.calls += 1
            n = self.calls
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if h.path != "/v1/chat/completions":
                return self._send(h, 404, json.dumps({"error": {"message": f"no route {h.path}"}}))
            if h.headers.get("Authorization") != f"Bearer {KEY}":
                return self._send(h, 401, json.dumps({"error": {"message": "Incorrect API key provided",
                                                                "type": "invalid_request_error"}}))
            req = json.loads(raw)
            problem = self.check_shape(req)
            if problem:
                with self.lock:
                    self.problems.append(problem)
                return self._send(h, 400, json.dumps({"error": {"message": problem}}))
            if not self.structured_outputs and req["response_format"]["type"] == "json_schema":
                return self._send(h, 400, json.dumps({"error": {
                    "message": "Invalid parameter: 'response_format' of type 'json_schema' is not supported"}}))
            fault = self.fault(n, req) if self.fault else None
            if self.latency:
                time.sleep(self.latency)
            if fault and fault.delay:
                time.sleep(fault.delay)
            if fault and fault.status != 200:
                return self._send(h, fault.status, fault.body or json.dumps({"error": {"message": "emulated failure"}}),
                                  fault.headers)
            url = req["messages"][-1]["content"][1]["image_url"]["url"]
            data = base64.b64decode(url.split(",", 1)[1])
            image = Image.open(io.BytesIO(data))
            content = fault.content if fault and fault.content is not None else self.answer(req, image)
            with self.lock:
                self.ok += 1
                self.images[hashlib.sha256(data).hexdigest()[:16]] += 1
            body = fault.body if fault and fault.body else json.dumps({
                "id": f"chatcmpl-{n}", "object": "chat.completion", "model": req["model"],
                "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 100 + len(data) // 1000, "completion_tokens": 20, "total_tokens": 120}})
            self._send(h, 200, body)
        finally:
            with self.lock:
                self.in_flight -= 1

    @staticmethod
    def check_shape(req: dict[str, Any]) -> str | None:
        try:
            assert isinstance(req["model"], str) and req["model"]
            msgs = req["messages"]
            assert msgs[0]["role"] == "system" and msgs[-1]["role"] == "user"
            text, image = msgs[-1]["content"]
            assert text["type"] == "text" and text["text"]
            assert image["type"] == "image_url" and image["image_url"]["url"].startswith("data:image/jpeg;base64,")
            assert image["image_url"]["detail"] in ("auto", "low", "high")
            rf = req["response_format"]
            assert rf["type"] in ("json_schema", "json_object")
            if rf["type"] == "json_schema":
                assert rf["json_schema"]["strict"] is True and rf["json_schema"]["schema"]["type"] == "object"
        except (AssertionError, KeyError, IndexError, TypeError, ValueError) as e:
            return f"malformed request: {type(e).__name__} {e}"
        return None
