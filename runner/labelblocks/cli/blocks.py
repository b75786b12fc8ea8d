"""``labelblocks plugins``, ``labelblocks blocks ...`` and ``labelblocks secrets ...``."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from ..errors import InvalidInput
from ._util import AppContext, pass_app, print_json


@click.command("plugins")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
def plugins_cmd(as_json: bool) -> None:
    """List installed plugins, their versions and blocks (and any that failed to load).

    \b
    Example:
      labelblocks plugins --json
    """
    from ..plugins import get_plugins

    p = get_plugins()
    p.registry()
    infos = list(p.infos.values())
    if as_json:
        print_json([i.to_json() for i in infos])
        return
    for i in infos:
        ver = f" {i.version}" if i.version else ""
        status = f"  FAILED: {i.error}" if i.error else f"  blocks: {', '.join(i.blocks) or '-'}"
        click.echo(f"{i.name}{ver} ({i.module}){status}")


@click.group("blocks")
def blocks_group() -> None:
    """Installed labeling blocks."""


@blocks_group.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@pass_app
def blocks_list(app: AppContext, as_json: bool) -> None:
    """List blocks: name, title, plugin and version, and what data they operate on (in a
    project, its external blocks too).

    \b
    Example:
      labelblocks blocks list
    """
    reg = app.registry(need_project=False)
    rows = [b.to_json() for b in sorted(reg.blocks.values(), key=lambda b: b.name)]
    if as_json:
        print_json(rows)
        return
    if not rows:
        click.echo("No blocks installed.")
        return
    for r in rows:
        click.echo(f"{r['name']:<24} {r['title']:<40} {r['plugin']} {r['version']}  [{', '.join(r['operatesOn'])}]")


@blocks_group.command("info")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Print the block's description and parameters as JSON.")
@pass_app
def blocks_info(app: AppContext, name: str, as_json: bool) -> None:
    """Show a block's description, parameters (type, default, help) and the secrets it needs.

    \b
    Example:
      labelblocks blocks info near-duplicates
    """
    from ..external_blocks import ExternalBlock

    b = app.registry(need_project=False).get(name)
    spec = b.cls.spec()
    runs = b.cls.describe() if issubclass(b.cls, ExternalBlock) else None
    if as_json:
        data = b.to_json()
        if runs:
            data["runs"] = runs
        data["description"] = spec.info.description
        data["parameters"] = [p.model_dump(by_alias=True, exclude_none=True) for p in spec.parameters]
        data["secrets"] = spec.secret_names
        print_json(data)
        return
    click.echo(f"{b.name}: {spec.info.name}   ({b.plugin} {b.version})")
    click.echo(f"operates on: {', '.join(spec.info.operates_on) or '-'}")
    if runs:
        click.echo(f"runs: {runs}")
    if spec.info.description:
        click.echo("")
        click.echo(click.wrap_text(spec.info.description, width=100))
    click.echo("\nparameters:")
    for p in spec.parameters:
        if p.type == "secret":
            continue
        default = "" if p.value is None else f" (default: {p.value!r})"
        cond = f" [shown when {p.show_if.parameter} {p.show_if.operator} {p.show_if.value}]" if p.show_if else ""
        click.echo(f"  -p {p.param}=...  {p.type}{default}{' optional' if p.optional else ''}{cond}")
        if p.valid:
            click.echo(f"      one of: {', '.join(p.valid_values())}")
        if p.help:
            click.echo(f"      {p.help}")
        if p.multiline:
            click.echo("      one item per line: -p $'" + p.param + "=first\\nsecond' in bash, or the protocol's "
                       "encoding -p '" + p.param + "=first\\nsecond' (a literal backslash-n is \\\\n)")
    if spec.secret_names:
        click.echo("\nsecrets (environment or `labelblocks secrets set NAME`): " + ", ".join(spec.secret_names))


@blocks_group.command("add")
@click.argument("path", required=False, type=click.Path(file_okay=False, path_type=Path))
@click.option("--command", help="The command to run in the block's folder (default: its Dockerfile's ENTRYPOINT/CMD); "
              "with --image, arguments given to the image before the protocol's.")
@click.option("--image", help="Register a container image instead of a folder (needs --parameters).")
@click.option("--parameters", type=click.Path(dir_okay=False, exists=True, path_type=Path),
              help="The block's parameters.json (default: the folder's).")
@click.option("--name", help="The block's name (default: the folder's or the image's name).")
@click.option("--timeout", type=click.FloatRange(min=1), help="Stop a step of this block after this many seconds.")
@click.option("--replace", is_flag=True, help="Replace an external block of the same name.")
@pass_app
def blocks_add(app: AppContext, path: Path | None, command: str | None, image: str | None, parameters: Path | None,
               name: str | None, timeout: float | None, replace: bool) -> None:
    """Register an external block in the project: a folder with a parameters.json and a
    program in any language, or a container image. It talks to the project over the
    protocol's HTTP API, which the runner serves on loopback while it runs.

    \b
    Examples:
      labelblocks blocks add ./my-block --command "python3 main.py"
      labelblocks blocks add ./ai-labeling-block            # command from its Dockerfile
      labelblocks blocks add --image ghcr.io/me/block:1 --parameters parameters.json --timeout 3600
      labelblocks blocks add --image labelblocks --command "blocks run owlvit" --parameters owlvit.json --name owlvit-docker
    """
    from ..external_blocks import add_block

    block = add_block(app.store, app.registry(), path=path, command=command, image=image, parameters=parameters,
                      name=name, timeout=timeout, replace=replace)
    b = app.registry().get(block)
    click.echo(f"Registered block {block} ({b.cls.title()}): runs {b.cls.describe()}")  # type: ignore[attr-defined]


@blocks_group.command("remove")
@click.argument("name")
@click.option("--force", is_flag=True, help="Remove it even though saved actions use it (they stop working).")
@pass_app
def blocks_remove(app: AppContext, name: str, force: bool) -> None:
    """Unregister an external block (installed plugins are removed with pip). A block that
    saved actions use is removed only with --force.

    \b
    Example:
      labelblocks blocks remove my-block
    """
    from ..actions import list_actions
    from ..external_blocks import remove_block

    users = [a.name for a in list_actions(app.store) if any(s.block == name for s in a.steps)]
    if users and not force:
        raise InvalidInput(f"block {name} is used by the action{'s' if len(users) != 1 else ''} {', '.join(users)}: "
                         "delete or change them first, or remove it anyway with --force")
    remove_block(app.store, name)
    click.echo(f"Removed block {name}")


@blocks_group.command("run", context_settings={"ignore_unknown_options": True, "allow_extra_args": True,
                                               "help_option_names": ["-h", "--help"]})
@click.argument("name")
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def blocks_run(name: str, args: tuple[str, ...]) -> None:
    """Run an installed block as a protocol block against the project at EI_API_ENDPOINT
    (key: EI_PROJECT_API_KEY): the arguments are the protocol's (--data-ids-file FILE,
    --propose-actions JOB, --PARAM VALUE ...); unknown ones are ignored. With
    --propose-actions, results are proposed changes of that job; without, they are written.

    \b
    Example:
      EI_API_ENDPOINT=http://127.0.0.1:4800/v1 EI_PROJECT_API_KEY=ei_... \\
        labelblocks blocks run relabel --data-ids-file ids.json --mapping "cat -> dog"
    """
    import os

    from ..parameters import parse_block_argv
    from ..plugins import get_registry
    from ..remote import RemoteProject, run_remote

    cls = get_registry().get(name).cls
    parsed = parse_block_argv(cls.spec(), list(args))
    if parsed.data_ids is None:
        raise InvalidInput("--data-ids-file FILE is required: a JSON array of the sample ids to label")
    pid = os.environ.get("EI_PROJECT_ID")
    project = RemoteProject(os.environ.get("EI_API_ENDPOINT", ""), os.environ.get("EI_PROJECT_API_KEY", ""),
                            int(pid) if pid and pid.isdigit() else None)
    what = f"job {parsed.propose_actions}" if parsed.propose_actions is not None else "the project"
    click.echo(f"{name}: {len(parsed.data_ids)} samples -> {what}", err=True)
    result = run_remote(cls, parsed.values, parsed.data_ids, project, parsed.propose_actions,
                        on_progress=lambda n: click.echo(f"{name}: {n}/{len(parsed.data_ids or [])}", err=True))
    for sid, err in sorted(result.failed.items()):
        click.echo(f"sample {sid} failed: {err}", err=True)
    click.echo(f"{name}: done {result.done - len(result.failed)}, failed {len(result.failed)}", err=True)
    if result.failed:
        sys.exit(1)


def register(group: click.Group) -> None:
    for c in (plugins_cmd, blocks_group):
        group.add_command(c)
