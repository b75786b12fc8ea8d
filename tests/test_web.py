"""The review web page in a real headless Chromium (Debian's package) driven by Playwright,
against the project's server on loopback: sign-in, the dataset and its filter, a sample's
metadata, previews drawn as cards, Accept / Reject, "Apply accepted", audio, and what is
refused (no session, no CSRF token, a job key). Screenshots of every page go to
SCREENSHOTS (printed at the end of the run)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from labelblocks.examples import make_example_data
from labelblocks.server import BackgroundServer, JobScope

from .conftest import Cli, make_audio

SCREENSHOTS = Path(os.environ.get("LABELBLOCKS_SCREENSHOTS", Path(__file__).parent.parent / "test-screenshots"))
TAKEN: list[Path] = []


def chromium() -> str:
    path = os.environ.get("LABELBLOCKS_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    assert path, "the web tests need Chromium: apt-get install chromium (.ci/run installs it)"
    return path


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=chromium(), args=["--no-sandbox"])
        yield b
        b.close()


def shot(page: Any, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    TAKEN.append(path)


@pytest.fixture
def site(cli: Cli, tmp_path: Path) -> Iterator[tuple[Cli, str, str, BackgroundServer]]:
    """The example images (boxes, sites, near-duplicate frames) in a project, a project key,
    and the server on loopback: (cli, base url, key, server)."""
    images, _ = make_example_data(tmp_path / "ex")
    cli("upload", "--info-file", str(images))
    key = cli.json("keys", "create")["key"]
    with BackgroundServer(cli.project) as srv:
        yield cli, srv.url.removesuffix("/v1"), key, srv


def sign_in(page: Any, base: str, key: str, path: str = "/") -> None:
    page.goto(base + path)
    page.get_by_label("Project key").fill(key)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_load_state()


def test_sign_in_dataset_filter_and_metadata(browser: Any, site: tuple[Cli, str, str, BackgroundServer]) -> None:
    cli, base, key, srv = site
    page = browser.new_page()
    # without a session every page is the sign-in page
    page.goto(base + "/samples/1")
    assert page.get_by_role("button", name="Sign in").count() == 1 and "/signin" in page.url
    shot(page, "signin")
    # a job key (valid for one step of one job) cannot sign in
    job_key = srv.app.state.lb.add_job_key(JobScope(job_id=1, step=1, sample_ids=frozenset({1})))
    page.get_by_label("Project key").fill(job_key)
    page.get_by_role("button", name="Sign in").click()
    assert "not an active project key" in page.get_by_role("alert").inner_text()
    page.get_by_label("Project key").fill(key)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(base + "/samples/1")  # back where it was going
    cookie = next(c for c in page.context.cookies() if c["name"] == "lb_session")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    # the dataset and its filter
    page.goto(base + "/")
    grid = page.get_by_role("list", name="Samples")
    assert grid.get_by_role("listitem").count() == 24
    first = cli.json("samples", "list", "--limit", "1")[0]
    card = grid.get_by_role("listitem", name=first["filename"])
    assert card.locator("rect.box").count() == len(first["boundingBoxes"])
    assert card.locator("rect.box title").first.text_content() == first["boundingBoxes"][0]["label"]
    shot(page, "dataset")
    page.get_by_label("Filter", exact=True).fill("site=Paris has:video_file")
    page.get_by_role("button", name="Apply filter").click()
    paris = cli.json("samples", "list", "--where", "site=Paris", "--has", "video_file")
    assert grid.get_by_role("listitem").count() == len(paris) == 12
    assert {grid.get_by_role("listitem").nth(i).get_attribute("aria-label") for i in range(12)} == \
        {s["filename"] for s in paris}
    page.get_by_label("JSON filter").fill('[{"key":"site","op":"neq","values":["Paris"]}]')
    page.get_by_label("Filter", exact=True).fill("")
    page.get_by_role("button", name="Apply filter").click()
    assert grid.get_by_role("listitem").count() == 12
    # a sample's page: edit its metadata; an empty key is refused with a message
    sid = first["id"]
    page.goto(f"{base}/samples/{sid}")
    page.get_by_label("New key").fill("checked")
    page.get_by_label("Value", exact=True).fill("by hand")
    page.get_by_role("button", name="Add metadata").click()
    assert cli.json("samples", "show", str(sid))["metadata"]["checked"] == "by hand"
    page.get_by_label("Value of site").fill("Marseille")
    page.get_by_role("button", name="Save site").click()
    page.get_by_role("button", name="Remove video_file").click()
    md = cli.json("samples", "show", str(sid))["metadata"]
    assert md["site"] == "Marseille" and "video_file" not in md
    page.get_by_label("New key").fill("   ")
    page.get_by_role("button", name="Add metadata").click()
    assert "the key is empty" in page.get_by_role("alert").inner_text()
    assert cli.json("samples", "show", str(sid))["metadata"] == md
    # who wrote each box and the label: after an action renamed them, the page names it
    cli("actions", "create", "web-rename", "--step", "relabel", "-p", "mapping=square -> box\ncircle -> ring")
    cli("actions", "run", "web-rename")
    shown = cli.json("samples", "show", str(sid))
    renamed = [b["label"] in ("box", "ring") for b in shown["boundingBoxes"]]
    assert any(renamed) and not all(renamed)  # a speck box stays the upload's
    page.goto(f"{base}/samples/{sid}")
    rows = page.locator("table.boxes tbody tr")
    assert rows.count() == len(shown["boundingBoxes"])
    assert [("action web-rename (job" in rows.nth(i).inner_text()) for i in range(rows.count())] == renamed
    assert "upload or a person" in rows.nth(renamed.index(False)).inner_text()
    assert "by action web-rename" in page.locator(".facts p").first.inner_text()
    shot(page, "sample")
    # a state-changing request without the CSRF token is refused, even with the session
    r = page.request.post(f"{base}/samples/{sid}/metadata", form={"op": "set", "key": "x", "value": "y"})
    assert r.status == 403 and "x" not in cli.json("samples", "show", str(sid))["metadata"]
    # without the session cookie: the sign-in page, nothing else
    r = requests.get(f"{base}/samples/{sid}", allow_redirects=False, timeout=10)
    assert r.status_code == 303 and r.headers["location"].startswith("/signin")
    assert requests.get(f"{base}/static/app.css", timeout=10).status_code == 200  # assets need none
    page.close()


def test_preview_review_and_apply_accepted(browser: Any, site: tuple[Cli, str, str, BackgroundServer]) -> None:
    cli, base, key, _ = site
    cli("actions", "create", "clean", "--step", "near-duplicates", "-p", "disable-duplicates=true",
        "--step", "relabel", "-p", "mapping=square -> box\ncircle -> ring", "-p", "min-box-area=1")
    page = browser.new_page()
    sign_in(page, base, key, "/actions")
    page.get_by_role("link", name="clean").click()
    shot(page, "action")
    page.get_by_label("Samples").fill("8")
    page.get_by_label("Grid columns").fill("4")
    page.get_by_role("button", name="Preview").click()
    page.wait_for_url(re.compile(r".*/jobs/\d+.*"), timeout=60_000)
    job = int(re.search(r"/jobs/(\d+)", page.url)[1])  # type: ignore[index]
    grid = page.get_by_role("list", name="Proposals")
    cards = grid.locator(":scope > li")
    assert cards.count() == 8
    shot(page, "proposals")
    proposals = cli.json("proposals", "show", str(job))["proposedChanges"]
    last: dict[int, dict[str, Any]] = {}
    for p in proposals:  # the last step's boxes are the proposal's boxes
        if "boundingBoxes" in p["proposedChanges"]:
            last[p["sampleId"]] = p["proposedChanges"]
    samples = {s["id"]: s for s in cli.json("samples", "list", "--include-disabled")}
    for i in range(8):
        card = cards.nth(i)
        sid = int(card.get_attribute("data-sample"))
        drawn = card.locator("rect.box:not(.removed)").count()
        expected = len(last[sid]["boundingBoxes"]) if sid in last else len(samples[sid]["boundingBoxes"])
        assert drawn == expected, (sid, drawn, expected)
        assert card.get_attribute("aria-label") == samples[sid]["filename"]
    renamed = grid.locator("rect.renamed title").first.text_content()
    assert renamed in ("square → box", "circle → ring")
    # accept two by click, one by keyboard, reject one
    ids = [int(cards.nth(i).get_attribute("data-sample")) for i in range(8)]
    cards.nth(0).get_by_role("button", name="Accept").click()
    cards.nth(1).get_by_role("button", name="Accept").click()
    cards.nth(2).get_by_role("button", name="Reject").click()
    cards.nth(3).focus()
    page.keyboard.press("a")
    page.keyboard.press("?")
    assert page.get_by_role("dialog", name="Keyboard shortcuts").is_visible()
    page.wait_for_function("document.querySelector('ul.proposals').dataset.decided === '4'")
    assert cards.nth(3).get_by_role("button", name="Accept").get_attribute("aria-pressed") == "true"
    assert page.locator("#accepted-count").inner_text() == "3 accepted"
    shot(page, "proposals-decided")
    # one accepted sample changes after the preview: it is left out, with the reason
    cli("samples", "label", str(ids[1]), "--label", "changed-meanwhile")
    before = {s["id"]: s for s in cli.json("samples", "list", "--include-disabled")}
    page.get_by_role("button", name="Apply accepted").click()
    page.wait_for_load_state()
    notice = page.get_by_role("status").inner_text()
    assert "Applied 2 accepted samples" in notice and f"sample {ids[1]}:" in notice
    shot(page, "applied")
    after = {s["id"]: s for s in cli.json("samples", "list", "--include-disabled")}
    changed = {sid for sid in after if after[sid] != before[sid]}
    assert changed == {ids[0], ids[3]}  # exactly the accepted ones that were still as previewed
    for sid in (ids[0], ids[3]):
        if sid in last:
            assert [b["label"] for b in after[sid]["boundingBoxes"]] == [b["label"] for b in last[sid]["boundingBoxes"]]
    assert after[ids[2]] == before[ids[2]]  # rejected: untouched
    assert all(after[sid] == before[sid] for sid in ids[4:])  # not decided: untouched
    # an evaluated job links to its report
    cli("evaluate", str(job), "--group-by", "site", "--where", "site=Paris")
    page.goto(f"{base}/jobs/{job}")
    page.get_by_role("link", name="Open the evaluation report").click()
    page.wait_for_load_state()
    assert f"Evaluation of job {job}" in page.content() and "By site" in page.content()
    assert page.locator("img").count() >= 2  # the confusion matrix and the bars, embedded
    shot(page, "report")
    page.close()


def test_label_all_with_live_progress(browser: Any, site: tuple[Cli, str, str, BackgroundServer]) -> None:
    cli, base, key, _ = site
    cli("actions", "create", "rename", "--step", "relabel", "-p", "mapping=square -> box")
    page = browser.new_page()
    sign_in(page, base, key, "/actions/rename")
    seen: list[str] = []
    page.on("response", lambda r: seen.append(r.url) if "/events" in r.url else None)
    page.get_by_role("button", name="Label all").click()
    page.wait_for_url(re.compile(r".*/jobs/\d+.*"), timeout=60_000)
    assert seen  # the progress came as server-sent events
    assert {b["label"] for s in cli.json("samples", "list") for b in s["boundingBoxes"]} >= {"box"}
    page.goto(base + "/actions/rename")
    assert "completed" in page.get_by_role("table").inner_text()
    page.close()


def test_audio_segments_reviewed_and_applied(browser: Any, cli: Cli, tmp_path: Path) -> None:
    for name in ("a", "b"):
        make_audio(tmp_path / "au" / f"{name}.wav", seconds=3.0, rate=1000, seed=ord(name))
    cli("upload", str(tmp_path / "au"), "--no-label")
    plan = {"a": [["speech", 0.9], ["dog", 0.8], ["speech", 0.7]], "b": [["dog", 0.9], ["dog", 0.2], ["dog", 0.9]]}
    cli("actions", "create", "tag", "--step", "fake-tagger", "-p", f"plan={json.dumps(plan)}")
    job = cli.json("actions", "preview", "tag")["jobId"]
    key = cli.json("keys", "create")["key"]
    with BackgroundServer(cli.project) as srv:
        base = srv.url.removesuffix("/v1")
        page = browser.new_page()
        sign_in(page, base, key, f"/jobs/{job}")
        cards = page.get_by_role("list", name="Proposals").locator(":scope > li")
        assert cards.count() == 2
        assert cards.first.locator("rect.seg.proposed").count() == 3  # three windows proposed
        assert cards.first.locator("img").get_attribute("alt").startswith("waveform of")
        shot(page, "proposals-audio")
        a = cards.filter(has_text="a.wav")
        a.get_by_role("button", name="Accept").click()
        cards.filter(has_text="b.wav").get_by_role("button", name="Reject").click()
        page.wait_for_function("document.querySelector('ul.proposals').dataset.decided === '2'")
        page.get_by_role("button", name="Apply accepted").click()
        page.wait_for_load_state()
        got = {s["filename"]: s for s in cli.json("samples", "list")}
        assert [x["label"] for x in got["a.wav"]["structuredLabels"]] == ["speech", "dog", "speech"]
        assert got["b.wav"]["structuredLabels"] == []
        # the sample page plays the recording, served with range requests
        page.goto(f"{base}/samples/{got['a.wav']['id']}")
        assert page.get_by_label("Play a.wav").count() == 1
        r = page.request.get(f"{base}/media/{got['a.wav']['id']}", headers={"Range": "bytes=0-99"})
        assert r.status == 206 and len(r.body()) == 100
        shot(page, "sample-audio")
        page.close()


def test_owlvit_boxes_drawn_as_proposed(browser: Any, cli: Cli, tmp_path: Path) -> None:
    pytest.importorskip("transformers")
    from .blocks.tiny_models import make_owl
    from .conftest import make_image

    model = make_owl(tmp_path / "owl")
    for i in range(3):
        make_image(tmp_path / "im" / f"street.{i}.png", size=(96, 64), seed=i)
    cli("upload", str(tmp_path / "im"), "--no-label")
    cli("actions", "create", "boxes", "--step", "owlvit", "-p", f"model={model}", "-p", "prompt=a cat (cat, 0.01)",
        "-p", "precision=fp32")
    job = cli.json("actions", "preview", "boxes")["jobId"]
    proposed = {p["sampleId"]: p["proposedChanges"]["boundingBoxes"]
                for p in cli.json("proposals", "show", str(job))["proposedChanges"]}
    key = cli.json("keys", "create")["key"]
    with BackgroundServer(cli.project) as srv:
        base = srv.url.removesuffix("/v1")
        page = browser.new_page()
        sign_in(page, base, key, f"/jobs/{job}")
        cards = page.get_by_role("list", name="Proposals").locator(":scope > li")
        assert cards.count() == 3
        for i in range(3):
            card = cards.nth(i)
            boxes = proposed[int(card.get_attribute("data-sample"))]
            assert card.locator("rect.added").count() == len(boxes) > 0
            titles = card.locator("rect.added title").all_text_contents()
            assert sorted(titles) == sorted(f"cat {b['score']:.2f}" for b in boxes)
            # drawn in the image's pixel space: the SVG's viewBox is the image's size
            assert card.locator("svg").get_attribute("viewBox") == "0 0 96 64"
        shot(page, "proposals-owlvit")
        page.close()


def test_review_command_prints_a_one_time_link(cli: Cli) -> None:
    cli("actions", "create", "rename", "--step", "relabel", "-p", "mapping=a -> b")
    from .conftest import make_image

    make_image(cli.project.parent / "x" / "a.png")
    cli("upload", str(cli.project.parent / "x"))
    job = cli.json("actions", "preview", "rename")["jobId"]
    proc = subprocess.Popen([sys.executable, "-m", "labelblocks", "--project", str(cli.project), "review", str(job),
                             "--no-browser", "--port", "0"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        url = proc.stdout.readline().strip()  # type: ignore[union-attr]
        assert url.startswith("http://127.0.0.1:") and "/signin/link?token=" in url
        deadline = time.time() + 30
        while True:
            try:
                s = requests.Session()
                r = s.get(url, timeout=10)
                break
            except requests.ConnectionError:
                assert time.time() < deadline
                time.sleep(0.2)
        assert r.status_code == 200 and f"Job {job}" in r.text and r.url.endswith(f"/jobs/{job}")
        assert requests.get(url, timeout=10).status_code == 401  # used once
        # while it runs, a second `review` uses the same server
        again = subprocess.run([sys.executable, "-m", "labelblocks", "--project", str(cli.project), "review",
                                "--no-browser"], capture_output=True, text=True, timeout=60)
        assert again.returncode == 0 and again.stdout.split("/signin")[0] == url.split("/signin")[0]
        assert "serves the page" in again.stderr
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_bad_requests_get_a_json_4xx(site: tuple[Cli, str, str, BackgroundServer]) -> None:
    """Huge ids, broken JSON, wrong types and the wrong kind of file: a 4xx in JSON, never a 500."""
    cli, base, key, _ = site
    cli("actions", "create", "rename", "--step", "relabel", "-p", "mapping=square -> box")
    job = cli.json("actions", "preview", "rename", "--limit", "2")["jobId"]
    s = requests.Session()
    s.post(f"{base}/signin", data={"key": key, "next": "/"}, timeout=30)
    csrf = re.search(r'name="csrf-token" content="([^"]+)"', s.get(f"{base}/", timeout=30).text)[1]  # type: ignore[index]
    huge = "9" * 30
    token = {"X-CSRF-Token": csrf}
    cases = [("GET", f"/jobs/{huge}", {}), ("GET", f"/samples/{huge}", {}), ("GET", f"/media/{huge}", {}),
             ("POST", f"/jobs/{huge}/apply", {"data": {"csrf": csrf}}),
             ("POST", f"/jobs/{job}/review", {"headers": {**token, "content-type": "application/json"},
                                              "data": b"{broken"}),
             ("POST", f"/jobs/{job}/review", {"headers": token, "json": [1]}),
             ("POST", f"/jobs/{job}/review", {"headers": token, "json": {"sampleIds": ["a"], "decision": "accepted"}}),
             ("POST", f"/jobs/{job}/review", {"headers": token, "json": {"sampleIds": [1], "decision": "maybe"}})]
    page = s.get(f"{base}/", timeout=30).text
    image = re.search(r"/thumbs/([0-9a-f]{64})\.jpg", page)[1]  # type: ignore[index]
    cases.append(("GET", f"/waveforms/{image}.png", {}))  # an image is not audio
    for method, path, kw in cases:
        r = s.request(method, base + path, timeout=30, allow_redirects=False, **kw)
        assert 400 <= r.status_code < 500 and r.json()["success"] is False, (path, r.status_code, r.text)
