"""The review page's routes: sign-in, the dataset, a sample, the actions, a job's proposals,
and the media they draw (thumbnails, waveforms, audio)."""

from __future__ import annotations

import asyncio
import json
import secrets
import shlex
import threading
from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse, Response, StreamingResponse

from ... import provenance
from ...api.state import JobId, SampleId, json_body
from ...apply import apply_reviewed, job_finals
from ...errors import InvalidInput, LabelblocksError, NotFound
from ...filters import SampleFilter, check_categories, from_shorthand, parse_metadata_json
from ...model import MAX_INT, Sample, check_text
from ...store import jobs as job_store
from ...store import proposals as proposal_store
from ...store import reviews
from ...store.keys import verify_key
from .drawing import audio_card, box_diff, image_card
from .session import (
    COOKIE,
    Session,
    Task,
    api_state,
    new_session,
    render,
    require_csrf,
    require_session,
    safe_next,
    set_cookie,
    web,
)
from .thumbs import thumbnail, waveform_png

router = APIRouter(include_in_schema=False)
Signed = Annotated[Session, Depends(require_session)]
PAGE = 48  # samples per dataset page
JOB_PAGE = 24  # proposals per page


# --- sign-in -------------------------------------------------------------------------------------


@router.get("/signin")
def signin_page(request: Request, next: str = "/") -> HTMLResponse:
    return render(request, "signin.html", next=safe_next(next), error=None)


@router.post("/signin")
async def signin(request: Request) -> Response:
    form = await request.form()
    target = safe_next(str(form.get("next") or "/"))
    key = str(form.get("key") or "").strip()
    record = verify_key(api_state(request).store, key) if key else None
    if record is None:  # a job key is not a project key: it is refused here like any wrong key
        return render(request, "signin.html", status=401, next=target,
                      error="That is not an active project key (create one with `labelblocks keys create`).")
    response = RedirectResponse(target, status_code=303)
    set_cookie(response, new_session(web(request), f"key:{record.id}"), request.url.scheme == "https")
    return response


@router.get("/signin/link")
def signin_link(request: Request, token: str = "", next: str = "/") -> Response:
    if not token or not reviews.use_sign_in_token(api_state(request).store, token):
        return render(request, "signin.html", status=401, next=safe_next(next),
                      error="This sign-in link was used already or has expired: sign in with a project key, or run "
                            "`labelblocks review` again for a new link.")
    response = RedirectResponse(safe_next(next), status_code=303)
    set_cookie(response, new_session(web(request), "link"), request.url.scheme == "https")
    return response


@router.post("/signout")
async def signout(request: Request, session: Signed) -> Response:
    await require_csrf(request, session, await request.form())
    response = RedirectResponse("/signin", status_code=303)
    response.delete_cookie(COOKIE, path="/")
    return response


# --- the dataset ---------------------------------------------------------------------------------


def parse_query(q: str, filter_json: str = "") -> SampleFilter:
    """The filter bar: ``KEY=VALUE``, ``KEY!=VALUE``, ``has:KEY``, ``missing:KEY``,
    ``label:L``, ``category:C``, ``unlabeled``, ``disabled``, ``any`` (any metadata condition
    instead of all), other words a file name search; plus the protocol's JSON filter."""
    try:
        tokens = shlex.split(q)
    except ValueError as e:
        raise InvalidInput(f"filter: {e}") from None
    where: list[str] = []
    where_not: list[str] = []
    has: list[str] = []
    missing: list[str] = []
    labels: list[str] = []
    categories: list[str] = []
    words: list[str] = []
    unlabeled = disabled = any_ = False
    for t in tokens:
        low = t.lower()
        if low in ("unlabeled", "disabled", "any"):
            unlabeled, disabled, any_ = unlabeled or low == "unlabeled", disabled or low == "disabled", any_ or low == "any"
        elif "!=" in t:
            where_not.append(t.replace("!=", "=", 1))
        elif "=" in t:
            where.append(t)
        elif ":" in t and t.split(":", 1)[0].lower() in ("has", "missing", "label", "category"):
            kind, value = t.split(":", 1)
            {"has": has, "missing": missing, "label": labels, "category": categories}[kind.lower()].append(value)
        else:
            words.append(t)
    conds, no_md, comb = from_shorthand(where, where_not, has, missing, False, any_)
    if filter_json.strip():
        jconds, jno, jcomb = parse_metadata_json(filter_json)
        conds, no_md = conds + jconds, no_md or jno
        comb = "or" if jcomb == "or" else comb
    return SampleFilter(metadata=conds, no_metadata=no_md, combinator=comb, labels=labels,
                        categories=check_categories(categories), unlabeled=unlabeled, disabled_only=disabled,
                        include_disabled=True, search=" ".join(words) or None)


def card(s: Sample) -> dict[str, Any]:
    return audio_card(s) if s.is_audio else image_card(s)


@router.get("/")
def dataset(request: Request, session: Signed, q: str = "", filter_json: str = "",
            after: Annotated[int, Query(ge=0, le=MAX_INT)] = 0,
            columns: Annotated[int, Query(ge=1, le=12)] = 6) -> HTMLResponse:
    store = api_state(request).store
    error = None
    samples: list[Sample] = []
    try:
        f = parse_query(q, filter_json)
        f.min_id = after + 1 if after else None
        samples = store.list_samples(f, limit=PAGE + 1)
    except LabelblocksError as e:
        error = str(e)
    more = len(samples) > PAGE
    samples = samples[:PAGE]
    next_url = ("/?" + urlencode({"q": q, "filter_json": filter_json, "after": samples[-1].id, "columns": columns})
                if more else None)
    return render(request, "dataset.html", cards=[card(s) for s in samples], q=q, filter_json=filter_json,
                  error=error, next_url=next_url, columns=columns, first=after == 0)


@router.get("/samples/{sample_id}")
def sample_page(request: Request, session: Signed, sample_id: SampleId, error: str = "",
                field: str = "") -> HTMLResponse:
    store = api_state(request).store
    s = store.get_sample(sample_id)
    c = card(s)
    # who wrote each box, the label and each metadata value (upload: nobody recorded)
    record = provenance.load(store.provenance_texts([sample_id]).get(sample_id))
    by_field = provenance.field_writers(s, record)
    box_by = [provenance.describe_writer(w) for w in provenance.box_writers(s, record)] if not c["audio"] else []
    for b, who in zip(c.get("boxes", []), box_by, strict=False):
        b["title"] = f"{b['title']} (by {who})"
    written = {"label": provenance.describe_writer(by_field.get("label")),
               "boxes": [(b, who) for b, who in zip(s.bounding_boxes, box_by, strict=False)],
               "metadata": {k: provenance.describe_writer(w) for k, w in by_field.get("metadata", {}).items()}}
    return render(request, "sample.html", s=s, c=c, error=error, field=field, written=written)


@router.post("/samples/{sample_id}/metadata")
async def edit_metadata(request: Request, session: Signed, sample_id: SampleId) -> Response:
    form = await request.form()
    await require_csrf(request, session, form)
    store = api_state(request).store
    store.get_sample(sample_id)
    op, key, value = str(form.get("op") or "set"), str(form.get("key") or ""), str(form.get("value") or "")
    problem = None
    if not key.strip():
        problem = "the key is empty: give the metadata key a name"
    else:
        try:
            check_text(key, "key")
            check_text(value, "value")
        except InvalidInput as e:
            problem = str(e)
    if problem is None:
        if op == "remove":
            store.update_metadata([sample_id], unset_keys=[key])
        else:
            store.update_metadata([sample_id], {key.strip(): value})
        return RedirectResponse(f"/samples/{sample_id}", status_code=303)
    return RedirectResponse(f"/samples/{sample_id}?" + urlencode({"error": problem, "field": op}), status_code=303)


# --- media ---------------------------------------------------------------------------------------


def _etag_response(request: Request, etag: str, make: Any, media_type: str) -> Response:
    headers = {"ETag": etag, "Cache-Control": "private, max-age=31536000, immutable"}
    if request.headers.get("if-none-match") == etag:
        return Response(status_code=304, headers=headers)
    path = make()
    return FileResponse(path, media_type=media_type, headers=headers)


def _hash(content_hash: str) -> str:
    if len(content_hash) != 64 or any(c not in "0123456789abcdef" for c in content_hash):
        raise NotFound("no such file")
    return content_hash


@router.get("/thumbs/{content_hash}.jpg")
def thumb(request: Request, session: Signed, content_hash: str,
          size: Annotated[int, Query(ge=32, le=1024)] = 256) -> Response:
    h = _hash(content_hash)
    w = web(request)
    store = api_state(request).store
    return _etag_response(request, f'"{h}-{size}"', lambda: thumbnail(store, w.thumbs, h, size), "image/jpeg")


@router.get("/waveforms/{content_hash}.png")
def waveform(request: Request, session: Signed, content_hash: str) -> Response:
    h = _hash(content_hash)
    w = web(request)
    store = api_state(request).store
    return _etag_response(request, f'"{h}-wave"', lambda: waveform_png(store, w.thumbs, h), "image/png")


@router.get("/media/{sample_id}")
def media(request: Request, session: Signed, sample_id: SampleId) -> Response:
    """The sample's file as uploaded (audio plays from it; Range requests are answered)."""
    store = api_state(request).store
    s = store.get_sample(sample_id)
    return FileResponse(store.blob_path(s), media_type=s.media_type or "application/octet-stream",
                        headers={"Cache-Control": "private, max-age=31536000, immutable"})


# --- actions and tasks ---------------------------------------------------------------------------


@router.get("/actions")
def actions_page(request: Request, session: Signed) -> HTMLResponse:
    from ...actions import list_actions

    store = api_state(request).store
    return render(request, "actions.html", actions=list_actions(store))


@router.get("/actions/{name}")
def action_page(request: Request, session: Signed, name: str, error: str = "") -> HTMLResponse:
    from ...actions import get_action

    store = api_state(request).store
    action = get_action(store, name)
    jobs = [j for j in job_store.list_jobs(store) if j.action == name][:30]
    counts = {j.id: job_store.job_state(store, j.id).counts() for j in jobs}
    return render(request, "action.html", action=action, jobs=jobs, counts=counts, error=error)


def _start(request: Request, name: str, kind: str, limit: int | None) -> Task:
    from ...actions import get_action
    from ...registry.project import project_registry
    from ...runner import Runner

    store = api_state(request).store
    action = get_action(store, name)
    w = web(request)
    task = Task(secrets.token_urlsafe(8), name, kind)
    with w.lock:
        w.tasks[task.id] = task

    def progress(phase: str, done: int, total: int) -> None:
        task.phase, task.done, task.total = phase, done, total

    def work() -> None:
        try:
            runner = Runner(store, project_registry(store))
            if kind == "preview":
                summary = runner.preview(action, limit=limit, on_progress=progress)
            else:
                summary = runner.run(action, on_progress=progress)
            task.job_id = summary.job_id
            task.summary = {"total": summary.total, "failed": summary.failed}
        except Exception as e:  # shown on the task's page
            task.error = str(e) or type(e).__name__
        finally:
            task.finished = True

    threading.Thread(target=work, name=f"labelblocks-web-{kind}", daemon=True).start()
    return task


@router.post("/actions/{name}/preview")
async def preview(request: Request, session: Signed, name: str) -> Response:
    form = await request.form()
    await require_csrf(request, session, form)
    try:
        limit = max(1, min(10_000, int(str(form.get("limit") or 12))))
        columns = max(1, min(12, int(str(form.get("columns") or 4))))
    except ValueError:
        return RedirectResponse(f"/actions/{name}?error=" + "the number of samples and columns are whole numbers",
                                status_code=303)
    task = _start(request, name, "preview", limit)
    return RedirectResponse(f"/tasks/{task.id}?columns={columns}", status_code=303)


@router.post("/actions/{name}/run")
async def run(request: Request, session: Signed, name: str) -> Response:
    await require_csrf(request, session, await request.form())
    task = _start(request, name, "run", None)
    return RedirectResponse(f"/tasks/{task.id}", status_code=303)


def _task(request: Request, task_id: str) -> Task:
    task = web(request).tasks.get(task_id)
    if task is None:
        raise NotFound(f"no task {task_id} on this server (it restarted?)")
    return task


@router.get("/tasks/{task_id}")
def task_page(request: Request, session: Signed, task_id: str, columns: int = 4) -> HTMLResponse:
    return render(request, "task.html", task=_task(request, task_id), columns=columns)


@router.get("/tasks/{task_id}/events")
async def task_events(request: Request, session: Signed, task_id: str) -> StreamingResponse:
    """Server-sent events: the task's progress every 0.25 s until it ends."""
    task = _task(request, task_id)

    async def events() -> Any:
        while True:
            data = {"phase": task.phase, "done": task.done, "total": task.total, "finished": task.finished,
                    "jobId": task.job_id, "error": task.error}
            yield f"data: {json.dumps(data)}\n\n"
            if task.finished or await request.is_disconnected():
                return
            await asyncio.sleep(0.25)

    return StreamingResponse(events(), media_type="text/event-stream", headers={"Cache-Control": "no-store"})


# --- a job's proposals ---------------------------------------------------------------------------


@router.get("/jobs/{job_id}")
def job_page(request: Request, session: Signed, job_id: JobId,
             offset: Annotated[int, Query(ge=0, le=MAX_INT)] = 0,
             columns: Annotated[int, Query(ge=1, le=12)] = 4, per: Annotated[int, Query(ge=1, le=200)] = JOB_PAGE,
             applied: int = -1, left: str = "") -> HTMLResponse:
    store = api_state(request).store
    job = job_store.get_job(store, job_id)
    if job is None:
        raise NotFound(f"no job {job_id}")
    state = job_store.job_state(store, job_id)
    page_ids = state.ids[offset : offset + per]
    samples = store.get_samples(page_ids, missing_ok=True)
    changes = proposal_store.read_proposals(store, job_id, page_ids)
    # what applying writes to each (the same computation as apply: the counts are what it writes)
    finals = {f.before.id: f.after for f in job_finals(store, job_id, [s.id for s in samples if s.id in changes])}
    decided = reviews.decisions(store, job_id)
    errors = job_store.job_errors(store, job_id)
    cards = []
    for s in samples:
        proposed = finals.get(s.id, s)
        if s.id in changes:  # the boxes' scores (kept in the job's record, not written) drawn beside them
            scores = {provenance.box_key(b): b.score for ch in changes[s.id] for b in ch.bounding_boxes or []
                      if b.score is not None}
            if scores:
                proposed = proposed.model_copy(update={"bounding_boxes": [
                    b.model_copy(update={"score": scores.get(provenance.box_key(b))}) for b in proposed.bounding_boxes]})
        c = card(s)
        c.update(box_diff(s, proposed))
        status = ("applied" if s.id in state.applied else "failed" if s.id in state.failed else
                  "left out" if s.id in state.discarded else "skipped" if s.id in state.skipped else "pending")
        c.update(status=status, decision=decided.get(s.id, ""), has_change=s.id in changes,
                 error=errors.get(s.id, (0, ""))[1])
        cards.append(c)
    left_out = reviews.left_out(store, job_id, [int(x) for x in left.split(",") if x.isdigit()]) if left else {}
    accepted = sum(1 for d in decided.values() if d == "accepted")
    evaluation = None
    from ...store.evaluations import get_evaluation

    found = get_evaluation(store, job_id)
    if found is not None:
        evaluation = found[1]
    return render(request, "job.html", job=job, cards=cards, counts=state.counts(), offset=offset, page=per,
                  total=len(state.ids), columns=columns, accepted=accepted, applied=applied, left_out=left_out,
                  usage=job.usage, evaluation=evaluation)


@router.post("/jobs/{job_id}/review")
async def review(request: Request, session: Signed, job_id: JobId) -> dict[str, Any]:
    """``{"sampleIds": [...], "decision": "accepted" | "rejected" | null}`` (JSON, with the
    X-CSRF-Token header)."""
    await require_csrf(request, session)
    body = await json_body(request)
    ids, decision = body.get("sampleIds", []), body.get("decision")
    if not isinstance(ids, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
        raise InvalidInput("sampleIds: expected a list of sample ids")
    if decision is not None and decision not in reviews.DECISIONS:
        raise InvalidInput(f"decision: expected one of {', '.join(reviews.DECISIONS)} or null, got {decision!r}")
    store = api_state(request).store
    if job_store.get_job(store, job_id) is None:
        raise NotFound(f"no job {job_id}")
    known = set(job_store.job_sample_ids(store, job_id))
    unknown = [i for i in ids if i not in known]
    if unknown:
        raise InvalidInput(f"samples {unknown[:10]} are not part of job {job_id}")
    reviews.decide(store, job_id, ids, decision)
    return {"success": True, "decisions": reviews.decisions(store, job_id)}


@router.post("/jobs/{job_id}/apply")
async def apply_accepted(request: Request, session: Signed, job_id: JobId) -> Response:
    """Apply exactly the accepted samples, through the same path as `proposals apply`."""
    form = await request.form()
    await require_csrf(request, session, form)
    store = api_state(request).store
    accepted = [sid for sid, d in reviews.decisions(store, job_id).items() if d == "accepted"]
    pending = set(job_store.job_state(store, job_id).pending())
    done = apply_reviewed(store, job_id, ids=[sid for sid in accepted if sid in pending])
    return RedirectResponse(f"/jobs/{job_id}?" + urlencode({"applied": done.applied,
                                                            "left": ",".join(map(str, done.left_out))}),
                            status_code=303)


@router.get("/jobs/{job_id}/report")
def report(request: Request, session: Signed, job_id: JobId) -> Response:
    """The job's evaluation as the HTML report (`labelblocks evaluate --report`), made again
    with what its stored evaluation selected, into the project's data folder."""
    from ...evaluate import run_evaluation
    from ...report import write_report
    from ...store.evaluations import get_evaluation

    store = api_state(request).store
    found = get_evaluation(store, job_id)
    if found is None:
        raise NotFound(f"job {job_id} has no evaluation: run `labelblocks evaluate {job_id}` first")
    sel = found[1].get("selection") or {}
    f = SampleFilter.from_json(sel["filter"], "the stored evaluation's filter") if sel.get("filter") else None
    ev = run_evaluation(store, job_id, sel.get("againstJob"), sel.get("groupBy") or (), f,
                        sel.get("minGroup") or 10, save=False, iou=sel.get("iou") or 0.5,
                        target_precision=sel.get("targetPrecision"))
    index = write_report(store, ev, store.root / "reports" / str(job_id))
    return HTMLResponse(index.read_text(encoding="utf-8"))


@router.get("/monitor")
def monitor_page(request: Request, session: Signed, by: str = "", hours: Annotated[float, Query(gt=0, le=24 * 366)] = 24
                 ) -> HTMLResponse:
    """Inference monitoring: the figures of `labelblocks monitor`, grouped by a custom
    metadata field, with its plot."""
    import base64
    import tempfile
    import time
    from pathlib import Path

    from ...inference import stats, write_plot
    from ...store.inferences import list_inferences

    store = api_state(request).store
    end = time.time()
    start = end - hours * 3600
    rows = list_inferences(store, since=start, until=end)
    prev = list_inferences(store, since=start - (end - start), until=start)
    doc = stats(rows, prev, by or None)
    fields = sorted({k for r in rows for k in r.metadata})
    plot = None
    if rows:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "monitor.png"
            write_plot(rows, by or None, start, end, path)
            plot = base64.b64encode(path.read_bytes()).decode()
    return render(request, "monitor.html", doc=doc, by=by, hours=hours, fields=fields, plot=plot)
