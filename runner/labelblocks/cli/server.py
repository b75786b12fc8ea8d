"""``labelblocks serve`` and ``labelblocks keys ...``."""

from __future__ import annotations

import click

from ..constants import MAX_IMAGE_PIXELS
from ._util import AppContext, pass_app


@click.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to listen on (0.0.0.0: every one).")
@click.option("--port", type=click.IntRange(0, 65535), default=4800, show_default=True, help="Port to listen on.")
@click.option("--max-upload-mb", type=click.IntRange(min=1), default=512, show_default=True,
              help="Largest ingestion request, all files together.")
@click.option("--max-file-mb", type=click.IntRange(min=1), default=128, show_default=True, help="Largest uploaded file.")
@click.option("--max-pixels", type=click.IntRange(min=1), default=MAX_IMAGE_PIXELS, show_default=True,
              help="Largest uploaded image, in pixels (width x height).")
@click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True,
              help="Server processes (each opens the project's database; writes are serialised by SQLite).")
@click.option("--max-models", type=click.IntRange(min=1), default=4, show_default=True,
              help="Inference: published models kept loaded (the least recently used goes first).")
@click.option("--max-batch-delay-ms", type=click.FloatRange(min=0), default=5.0, show_default=True,
              help="Inference: how long a request waits for others to share its model's batch.")
@click.option("--keep-images", default="off", show_default=True, metavar="off|all|low-confidence:T",
              help="Inference: keep the images answered (all, or those whose best confidence is under T) in the "
                   "project, for `inferences add-to-dataset`.")
@pass_app
def serve_cmd(app: AppContext, host: str, port: int, max_upload_mb: int, max_file_mb: int, max_pixels: int,
              workers: int, max_models: int, max_batch_delay_ms: float, keep_images: str) -> None:
    """Serve the project over HTTP: the protocol's raw-data API under /v1/api/1/...,
    its ingestion service under /api/{training,testing,validation,split}/files, a health
    check at /healthz and the OpenAPI document at /openapi.json.

    Every request but the health check needs a key from `labelblocks keys create` in the
    x-api-key header.

    \b
    Example:
      labelblocks keys create --name laptop
      labelblocks serve --port 4800
      curl -H "x-api-key: $KEY" "http://127.0.0.1:4800/v1/api/1/raw-data?limit=5"
    """
    from ..api import MB
    from ..inference import parse_keep
    from ..server import Limits

    parse_keep(keep_images)  # a bad spec is refused before the server starts
    limits = Limits(upload_bytes=max_upload_mb * MB, file_bytes=max_file_mb * MB, max_pixels=max_pixels,
                    max_models=max_models, max_batch_delay_ms=max_batch_delay_ms, keep_images=keep_images)
    project_dir = app.project_dir
    app.store  # noqa: B018 - opens (and migrates) the project before the server starts
    click.echo(f"Serving {project_dir} on http://{host}:{port} (API base http://{host}:{port}/v1)", err=True)
    from ..store.keys import list_keys

    if not any(k.revoked_at is None for k in list_keys(app.store)):
        click.echo("The project has no active API key yet: every request but /healthz will get 401. "
                   "Create one with `labelblocks keys create`.", err=True)
    if workers > 1:
        import os

        import uvicorn

        os.environ["LABELBLOCKS_SERVE_PROJECT"] = str(project_dir)
        from ..server.app import limits_env

        os.environ["LABELBLOCKS_SERVE_LIMITS"] = limits_env(limits)
        from ..api.http import http_protocol

        uvicorn.run("labelblocks.server.app:app_from_env", factory=True, host=host, port=port, workers=workers,
                    http=http_protocol(),
                    log_level="info")
        return
    from ..server import serve

    serve(project_dir, host, port, limits=limits)


@click.command("review")
@click.argument("job_id", type=int, required=False)
@click.option("--port", type=click.IntRange(0, 65535), default=4800, show_default=True,
              help="Port on 127.0.0.1 (another free one if it is taken).")
@click.option("--no-browser", is_flag=True, help="Only print the address; do not open a browser.")
@pass_app
def review_cmd(app: AppContext, job_id: int | None, port: int, no_browser: bool) -> None:
    """Review in the browser: a job's proposals drawn on its images and audio, with Accept /
    Reject and "Apply accepted" (without JOB: the dataset). Prints first the page's address
    with a one-time sign-in link, opens a browser when there is one, and serves the page on
    loopback until Ctrl-C (or uses the project's server when one runs).

    \b
    Examples:
      labelblocks actions preview boxes --limit 24 && labelblocks review 3
      labelblocks review --no-browser        # on a remote machine: ssh -L 4800:127.0.0.1:4800
    """
    import socket
    import sys
    import webbrowser
    from urllib.parse import urlencode

    from ..server import running_server, serve
    from ..store import jobs as job_store
    from ..store.reviews import TOKEN_SECONDS, new_sign_in_token

    if job_id is not None and job_store.get_job(app.store, job_id) is None:
        from ..errors import NotFound

        raise NotFound(f"no job {job_id}: see `labelblocks jobs list`")
    token = new_sign_in_token(app.store)
    target = f"/jobs/{job_id}" if job_id is not None else "/"
    base = running_server(app.store)
    reuse = base is not None
    if base is None:
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        base = f"http://127.0.0.1:{port}"
    url = f"{base}/signin/link?" + urlencode({"token": token, "next": target})
    click.echo(url)
    sys.stdout.flush()
    click.echo(f"(the link signs in once, within {TOKEN_SECONDS // 60} minutes; later, sign in with a project key)",
               err=True)
    if not no_browser:
        try:
            webbrowser.open(url)
        except Exception:  # no browser here: the address is printed
            pass
    if reuse:
        click.echo(f"The project's server at {base} serves the page.", err=True)
        return
    click.echo(f"Serving {app.project_dir} on {base} (Ctrl-C stops)", err=True)
    serve(app.project_dir, "127.0.0.1", port, log_level="warning")


def register(group: click.Group) -> None:
    for c in (serve_cmd, review_cmd):
        group.add_command(c)
