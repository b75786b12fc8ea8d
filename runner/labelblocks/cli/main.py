"""The ``labelblocks`` command group: the project option, library errors as clean messages, and
every command group registered. Nothing heavy is imported here: ``labelblocks --help`` stays fast
and never imports torch."""

from __future__ import annotations

import os
from typing import Any

import click

from .. import __version__
from ..errors import LabelblocksError, storage_error
from ._util import AppContext

DEBUG_ENV = "LABELBLOCKS_DEBUG"


class _Group(click.Group):
    """Turns library errors into clean messages (exit 1, or 2 for misuse);
    ``LABELBLOCKS_DEBUG=1`` keeps the traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except LabelblocksError as e:
            if os.environ.get(DEBUG_ENV):
                raise
            if e.exit_code == 2:
                raise click.UsageError(str(e), ctx) from None
            raise click.ClickException(str(e)) from None
        except (click.exceptions.Exit, click.ClickException, click.Abort, KeyboardInterrupt):
            raise
        except Exception as e:
            known = storage_error(e)
            if known is None or os.environ.get(DEBUG_ENV):
                raise
            raise click.ClickException(str(known)) from None


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="labelblocks")
@click.option(
    "--project",
    envvar="LABELBLOCKS_PROJECT",
    metavar="DIR",
    help="The project folder (default: the current folder or the nearest parent with a project).",
)
@click.pass_context
def main(ctx: click.Context, project: str | None) -> None:
    """labelblocks: label images and audio with AI blocks, review, then apply.

    \b
    Examples:
      labelblocks demo                                   # the whole loop on example data, offline
      labelblocks init my-dataset && cd my-dataset
      labelblocks upload ../photos --metadata site=Paris
      labelblocks samples list --where site=Paris
    """
    app = AppContext(project)
    ctx.obj = app
    ctx.call_on_close(app.close)


def _register() -> None:
    from . import (
        actions,
        blocks,
        demo,
        evaluate,
        export,
        inferences,
        jobs,
        keys,
        learn,
        metadata,
        org,
        project,
        proposals,
        registry,
        samples,
        secrets,
        server,
        split,
        sync,
        upload,
    )

    for mod in (demo, project, upload, sync, samples, metadata, split, export, blocks, secrets, registry, actions, jobs,
                proposals, evaluate, learn, inferences, server, keys, org):
        mod.register(main)


_register()
