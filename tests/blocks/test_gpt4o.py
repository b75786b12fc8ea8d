"""The GPT-4o blocks against a real HTTP server on loopback that behaves like the Chat
Completions API (tests/blocks/openai_emulator.py), failures included."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
from PIL import Image

from labelblocks_gpt4o.block import fit, image_tokens
from labelblocks_gpt4o.client import ApiError, ChatClient, parse_answer, parse_duration, retry_delay
from tests.blocks.openai_emulator import KEY, Emulator, Fault
from tests.conftest import Cli


def shade(path: Path, value: int, size: tuple[int, int] = (64, 48)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(value)
    arr = np.clip(value + rng.integers(-5, 5, (size[1], size[0], 3)), 0, 255).astype("uint8")
    Image.fromarray(arr).save(path)
    return path


@pytest.fixture
def dataset(cli: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Cli:
    """12 images: 5 bright (car), 4 dark (truck), 3 grey (unsure); the key in the environment."""
    for i, v in enumerate([200] * 5 + [50] * 4 + [128] * 3):
        shade(tmp_path / "d" / f"img{i:02d}.png", v + i)
    cli("upload", str(tmp_path / "d"), "--no-label")
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    return cli


def create_label_action(cli: Cli, emu: Emulator, *extra: str) -> None:
    cli("actions", "create", "ask", "--step", "gpt4o-image-label", "-p", f"base-url={emu.base_url}",
        "-p", "concurrency=4", "-p", "timeout=2", "-p", "max-retries=4", *extra, "--set-metadata", "ai-labeled=true")


def everything_printed(cli: Cli, project: Path) -> str:
    out = [cli("jobs", "list", "--json").stdout]
    for job in cli.json("jobs", "list"):
        out.append(cli("jobs", "show", str(job["id"]), "--json").stdout)
        out.append(cli("proposals", "show", str(job["id"]), "--json").stdout)
    out.extend(p.read_bytes().decode("latin-1") for p in project.rglob("*") if p.is_file())
    return "\n".join(out)


def test_image_label_preview_then_run_never_pays_twice(dataset: Cli) -> None:
    cli = dataset
    with Emulator() as emu:
        create_label_action(cli, emu)
        preview = cli.json("actions", "preview", "ask", "--limit", "4")
        assert emu.ok == 4 and preview["failed"] == 0
        out = cli.json("actions", "run", "ask")
        assert out["applied"] == 12 and out["failed"] == 0
        assert emu.ok == 12  # the 4 previewed images were not asked again
        assert max(emu.images.values()) == 1 and len(emu.images) == 12  # every image asked exactly once
        assert emu.problems == []
        samples = {s["filename"]: s for s in cli.json("samples", "list", "--include-disabled")}
        labels = {n: (s.get("label"), s["isDisabled"]) for n, s in samples.items()}
        assert [labels[f"img{i:02d}.png"] for i in range(12)] == (
            [("car", False)] * 5 + [("truck", False)] * 4 + [(None, True)] * 3)
        s0 = samples["img00.png"]["metadata"]
        assert s0["reason"].startswith("brightness") and s0["prompt"].startswith("Label this image")
        job = cli.json("jobs", "show", str(out["jobId"]))
        assert job["usage"]["requests"] == 8 and job["usage"]["prompt_tokens"] > 0
        assert job["usage"]["completion_tokens"] == 8 * 20
        # a second run of the same action over the same images: answers from the project's cache
        cli("metadata", "set", "--where", "ai-labeled=true", "ai-labeled=again")  # new revisions: recomputed
        again = cli.json("actions", "run", "ask")
        assert emu.ok == 12 and cli.json("jobs", "show", str(again["jobId"]))["usage"]["cache_hits"] == 12
    assert KEY not in everything_printed(cli, cli.project)


def test_retries_429_500_timeouts_and_bad_answers(dataset: Cli) -> None:
    cli = dataset
    seen: dict[str, int] = {}

    def fault(n: int, req: dict[str, Any]) -> Fault | None:
        url = req["messages"][-1]["content"][1]["image_url"]["url"]
        k = seen[url] = seen.get(url, 0) + 1
        digest = sum(map(ord, url[-40:])) % 6
        if k == 1 and digest == 0:
            return Fault(429, {"Retry-After": "0.2"})
        if k == 1 and digest == 1:
            return Fault(500)
        if k == 1 and digest == 2:
            return Fault(delay=3.0)  # past the 2 s timeout
        if digest == 3:
            return Fault(content="```json\n" + json.dumps({"label": "bus", "reason": "fenced"}) + "\n```")
        if digest == 4 and k <= 10:
            return Fault(content="Sure! I think it is a bus.")  # never JSON: fails that sample
        return None

    with Emulator(fault=fault) as emu:
        create_label_action(cli, emu)
        out = cli.json("actions", "run", "ask", expect=None)
        samples = cli.json("samples", "list", "--include-disabled")
        failed = out["failed"]
        job = cli.json("jobs", "show", str(out["jobId"]))
        errors = [e["error"] for e in job.get("failures", [])] if "failures" in job else []
        kinds = [sum(map(ord, u[-40:])) % 6 for u in seen]
        assert {0, 1, 2, 3, 4} <= set(kinds)  # every kind of fault was met
        assert out["applied"] + failed == 12  # no sample lost
        assert failed == kinds.count(4)  # only the never-JSON answers failed, each its own sample
        assert len(errors) == failed and all("raw answer: 'Sure! I think it is a bus.'" in e for e in errors)
        assert 0 < job["usage"]["retries"] <= 12 * 4  # bounded
        assert emu.ok == job["usage"]["requests"]
        assert sum(s.get("label") == "bus" for s in samples) == kinds.count(3)  # fenced answers were read
    assert KEY not in everything_printed(cli, cli.project)


def test_a_wrong_key_fails_clearly_without_showing_it(dataset: Cli, monkeypatch: pytest.MonkeyPatch) -> None:
    cli = dataset
    monkeypatch.setenv("OPENAI_API_KEY", "sk-wrong-key-that-must-not-leak")
    with Emulator() as emu:
        create_label_action(cli, emu)
        r = cli("actions", "run", "ask", "--json", expect=None)
        assert emu.ok == 0
        text = r.stdout + r.stderr + everything_printed(cli, cli.project)
        assert "sk-wrong-key-that-must-not-leak" not in text
        job = cli.json("jobs", "list")[-1]
        shown = cli("jobs", "show", str(job["id"])).stdout
        assert "API key was refused" in shown and "secrets set OPENAI_API_KEY" in shown


def test_no_key_is_a_clear_error(cli: Cli, tmp_path: Path) -> None:
    shade(tmp_path / "d" / "a.png", 200)
    cli("upload", str(tmp_path / "d"), "--no-label")
    with Emulator() as emu:
        create_label_action(cli, emu)
        err = cli("actions", "run", "ask", expect=1).stderr
        assert "OPENAI_API_KEY" in err and emu.calls == 0


def test_json_mode_fallback_for_servers_without_structured_outputs(dataset: Cli) -> None:
    cli = dataset
    with Emulator(structured_outputs=False) as emu:
        create_label_action(cli, emu)
        out = cli.json("actions", "run", "ask")
        assert out["failed"] == 0 and emu.ok == 12


def test_concurrency_is_used(dataset: Cli) -> None:
    cli = dataset
    with Emulator(latency=0.2) as emu:
        create_label_action(cli, emu)
        cli.json("actions", "run", "ask")
        assert emu.max_in_flight == 4


def test_box_relabel_after_boxes_and_validation(dataset: Cli) -> None:
    cli = dataset

    def answer(req: dict[str, Any], image: Any) -> str:
        if req["response_format"].get("json_schema", {}).get("name") == "validation":
            text = req["messages"][-1]["content"][0]["text"]
            return json.dumps({"valid": "keep" in text, "reason": "checked the boxes"})
        # crops: wide -> "van", tall -> "remove"
        return json.dumps({"label": "van" if image.width >= image.height else "remove", "reason": "shape"})

    with Emulator(answer=answer) as emu:
        cli("actions", "create", "fix", "--step", "fake-boxer", "-p", "label=vehicle",
            "--step", "gpt4o-bbox-relabel", "-p", f"base-url={emu.base_url}", "-p", "which-labels=vehicle",
            "--step", "gpt4o-bbox-validate", "-p", f"base-url={emu.base_url}", "-p", "validation-prompt=keep vans")
        out = cli.json("actions", "run", "fix")
        assert out["failed"] == 0
        samples = cli.json("samples", "list", "--include-disabled")
        for s in samples:
            assert [b["label"] for b in s["boundingBoxes"]] == ["van"]  # fake-boxer's 20x10 box is wide
            assert s["metadata"]["validation"] == "valid" and not s["isDisabled"]
        assert emu.ok == 24


def test_estimate_spends_nothing(dataset: Cli) -> None:
    cli = dataset
    with Emulator() as emu:
        create_label_action(cli, emu, "-p", "image-quality=low")
        est = cli.json("actions", "run", "ask", "--estimate")
        assert est["steps"][0]["requests"] == 12 and est["steps"][0]["promptTokens"] >= 12 * 85
        assert emu.calls == 0 and cli.json("jobs", "list") == []
        text = cli("actions", "preview", "ask", "--limit", "3", "--estimate").stdout
        assert "3 requests" in text and emu.calls == 0


# -- the client's pieces, table-driven ---------------------------------------------------------------

@pytest.mark.parametrize(("text", "expected"), [
    ('{"label": "car", "reason": "x"}', {"label": "car", "reason": "x"}),
    ('```json\n{"label": "car"}\n```', {"label": "car"}),
    ('Here you go: {"label": "car", "reason": "wheels"} Hope it helps!', {"label": "car", "reason": "wheels"}),
])
def test_parse_answer(text: str, expected: dict[str, Any]) -> None:
    assert parse_answer(text) == expected


@pytest.mark.parametrize("text", ["car", "", "[1, 2]", "{label: car}"])
def test_unreadable_answers(text: str) -> None:
    from labelblocks_gpt4o.client import UnreadableAnswer

    with pytest.raises(UnreadableAnswer):
        parse_answer(text)


@pytest.mark.parametrize(("text", "seconds"), [("1s", 1.0), ("6m0s", 360.0), ("20ms", 0.02), ("1h2m3.5s", 3723.5),
                                               ("soon", None)])
def test_parse_duration(text: str, seconds: float | None) -> None:
    assert parse_duration(text) == seconds


def _response(status: int, headers: dict[str, str]) -> requests.Response:
    r = requests.Response()
    r.status_code = status
    r.headers.update(headers)
    return r


@pytest.mark.parametrize(("headers", "attempt", "low", "high"), [
    ({"Retry-After": "0.2"}, 1, 0.2, 0.2),
    ({"retry-after-ms": "150"}, 1, 0.15, 0.15),
    ({"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "1.5s"}, 1, 1.5, 1.5),
    ({"x-ratelimit-remaining-requests": "7", "x-ratelimit-reset-requests": "9s"}, 1, 0.0, 0.5),  # not the limit
    ({}, 1, 0.0, 0.5), ({}, 4, 0.0, 4.0), ({}, 20, 0.0, 30.0),
])
def test_retry_delay(headers: dict[str, str], attempt: int, low: float, high: float) -> None:
    for seed in range(20):
        d = retry_delay(_response(429, headers), attempt, random.Random(seed))
        assert low <= d <= high


def test_client_gives_up_after_max_retries() -> None:
    waits: list[float] = []
    with Emulator(fault=lambda n, req: Fault(503)) as emu:
        client = ChatClient(api_key=KEY, model="gpt-4o", base_url=emu.base_url, max_retries=3, sleep=waits.append)
        msgs = [{"role": "system", "content": "x"}, {"role": "user", "content": [
            {"type": "text", "text": "q"}, {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,AA",
                                                                             "detail": "low"}}]}]
        with pytest.raises(ApiError, match="gave up after 3 retries: HTTP 503"):
            client.ask_json(msgs, "label", {"type": "object", "properties": {}, "required": []})
        assert emu.calls == 4 and len(waits) == 3 and client.usage.retries == 3


@pytest.mark.parametrize(("size", "detail", "sent", "tokens"), [
    ((4000, 3000), "low", (512, 384), 85),
    ((4000, 3000), "high", (1024, 768), 85 + 170 * 4),
    ((640, 480), "auto", (640, 480), 85 + 170 * 2),
    ((300, 200), "high", (300, 200), 85 + 170),
    ((5000, 1000), "high", (2048, 410), 85 + 170 * 4),
])
def test_image_sizing_and_tokens(size: tuple[int, int], detail: str, sent: tuple[int, int], tokens: int) -> None:
    assert fit(*size, detail) == sent
    assert image_tokens(*size, detail) == tokens


def test_owlvit_then_gpt4o_relabel_in_one_action(dataset: Cli, tmp_path: Path) -> None:
    from tests.blocks.tiny_models import make_owl

    cli = dataset
    model = make_owl(tmp_path / "owl")

    def answer(req: dict[str, Any], image: Any) -> str:
        return json.dumps({"label": "car" if image.width >= image.height else "remove", "reason": "shape"})

    with Emulator(answer=answer) as emu:
        cli("actions", "create", "vehicles", "--step", "owlvit", "-p", f"model={model}", "-p", "precision=fp32",
            "-p", "prompt=a vehicle (vehicle, 0.0)", "-p", "nms=true", "-p", "nms-iou-threshold=0.1",
            "--step", "gpt4o-bbox-relabel", "-p", f"base-url={emu.base_url}",
            "-p", "which-labels=vehicle")
        preview = cli.json("actions", "preview", "vehicles", "--limit", "3")
        props = cli.json("proposals", "show", str(preview["jobId"]))["proposedChanges"]
        step1 = {p["sampleId"]: p["proposedChanges"]["boundingBoxes"] for p in props if p["step"] == 1}
        asked = sum(len(b) for b in step1.values())
        assert asked > 0 and emu.ok == asked  # one request per owlvit box
        out = cli.json("actions", "run", "vehicles")
        assert out["failed"] == 0
        boxes = [b for s in cli.json("samples", "list") for b in s["boundingBoxes"]]
        assert boxes and {b["label"] for b in boxes} == {"car"}
        assert all(b["width"] >= b["height"] for b in boxes)  # tall crops were removed


def test_cache_holds_no_secret_and_is_keyed_by_endpoint(dataset: Cli, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """A server that echoes the Authorization header puts nothing of the key in the answer cache
    (or anywhere); an answer of one server is never the answer of another."""
    import base64
    import socket
    import urllib.parse

    cli = dataset
    echo = json.dumps({"label": "car", "reason": f"you sent Authorization: Bearer {KEY}"})
    with Emulator(fault=lambda n, req: Fault(content=echo)) as emu:
        cli("actions", "create", "ask", "--step", "gpt4o-image-label", "-p", "concurrency=4", "-p", "timeout=2",
            "-p", "max-retries=0")
        monkeypatch.setenv("OPENAI_BASE_URL", emu.base_url)
        preview = cli.json("actions", "preview", "ask", "--limit", "4")
        assert preview["failed"] == 0 and emu.ok == 4
    cache = next(cli.project.rglob("gpt4o-answers.sqlite"))
    stored = b"".join(p.read_bytes() for p in cache.parent.glob("gpt4o-answers.sqlite*"))
    for form in (KEY, base64.b64encode(KEY.encode()).decode(), urllib.parse.quote(KEY), KEY[5:20]):
        assert form.encode() not in stored
    assert b"you sent Authorization: Bearer ***" in stored  # what the block used, redacted
    assert KEY not in everything_printed(cli, cli.project)
    # the same action against a server that is down: nothing comes from the first server's answers
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}/v1"
    monkeypatch.setenv("OPENAI_BASE_URL", dead)
    out = json.loads(cli("actions", "run", "ask", "--json", expect=None).stdout)
    assert out["applied"] == 0 and out["failed"] == 12
    assert all(s.get("label") is None for s in cli.json("samples", "list"))


def test_identical_requests_in_flight_are_sent_once(cli: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    img = shade(tmp_path / "same" / "a.png", 200)
    for i in range(8):
        (tmp_path / "same" / f"copy{i}.png").write_bytes(img.read_bytes())
    cli("upload", str(tmp_path / "same"), "--no-label")
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    with Emulator(latency=0.5) as emu:
        cli("actions", "create", "ask", "--step", "gpt4o-image-label", "-p", f"base-url={emu.base_url}",
            "-p", "concurrency=8")
        out = cli.json("actions", "run", "ask")
        assert out["applied"] == 9 and out["failed"] == 0
        assert emu.ok == 1  # nine identical images, one paid request
    assert {s.get("label") for s in cli.json("samples", "list")} == {"car"}


def test_a_refused_key_stops_the_job_at_once(dataset: Cli, monkeypatch: pytest.MonkeyPatch) -> None:
    cli = dataset
    monkeypatch.setenv("OPENAI_API_KEY", "sk-wrong-key-that-must-not-leak")
    with Emulator(latency=0.05) as emu:
        create_label_action(cli, emu)
        r = cli("actions", "run", "ask", expect=1)
        assert "API key was refused" in r.output and "secrets set OPENAI_API_KEY" in r.output
        assert "proposals apply" not in r.output and "sk-wrong-key" not in r.output
        assert emu.calls <= 4  # the requests already in flight at most: nothing was sent after the refusal
        [job] = cli.json("jobs", "list")
        assert job["status"] == "failed"
        # fixed key: the same command resumes the job and finishes it
        monkeypatch.setenv("OPENAI_API_KEY", KEY)
        out = cli.json("actions", "run", "ask")
        assert out["resumed"] and out["applied"] == 12 and out["failed"] == 0


def test_estimate_counts_reused_results_and_says_what_depends_on_earlier_steps(dataset: Cli) -> None:
    cli = dataset
    with Emulator() as emu:
        create_label_action(cli, emu)
        cli.json("actions", "preview", "ask", "--limit", "4")
        [step] = cli.json("actions", "run", "ask", "--estimate")["steps"]
        assert step["reused"] == 4 and step["requests"] == 8 and emu.ok == 4
        text = cli("actions", "run", "ask", "--estimate").stdout
        assert "8 requests" in text and "4 samples' results reused" in text
        cli("actions", "create", "chain", "--step", "relabel", "-p", "mapping=car -> vehicle",
            "--step", "gpt4o-bbox-relabel", "-p", f"base-url={emu.base_url}", "-p", "which-labels=vehicle",
            "-p", "prompt=Is this a car or a truck?")
        steps = cli.json("actions", "run", "chain", "--estimate")["steps"]
        assert steps[1].get("dependsOnEarlierSteps") is True and "dependsOnEarlierSteps" not in steps[0]
        assert "depends on their results" in cli("actions", "run", "chain", "--estimate").stdout
        assert emu.ok == 4  # estimates send nothing
