"""``labelblocks plugins``, ``labelblocks blocks ...`` and ``labelblocks secrets ...``."""

from __future__ import annotations

import sys

import click

from ..errors import InvalidInput
from ._util import print_json


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
def blocks_list(as_json: bool) -> None:
    """List blocks: name, title, plugin and version, and what data they operate on.

    \b
    Example:
      labelblocks blocks list
    """
    from ..plugins import get_registry

    reg = get_registry()
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
def blocks_info(name: str, as_json: bool) -> None:
    """Show a block's description, parameters (type, default, help) and the secrets it needs.

    \b
    Example:
      labelblocks blocks info near-duplicates
    """
    from ..plugins import get_registry

    b = get_registry().get(name)
    spec = b.cls.spec()
    if as_json:
        data = b.to_json()
        data["description"] = spec.info.description
        data["parameters"] = [p.model_dump(by_alias=True, exclude_none=True) for p in spec.parameters]
        data["secrets"] = spec.secret_names
        print_json(data)
        return
    click.echo(f"{b.name}: {spec.info.name}   ({b.plugin} {b.version})")
    click.echo(f"operates on: {', '.join(spec.info.operates_on) or '-'}")
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
    if spec.secret_names:
        click.echo("\nsecrets (environment or `labelblocks secrets set NAME`): " + ", ".join(spec.secret_names))


@click.group("secrets")
def secrets_group() -> None:
    """Secrets for blocks (API keys), stored outside projects, readable only by you."""


@secrets_group.command("set")
@click.argument("name")
@click.option("--stdin", "from_stdin", is_flag=True, help="Read the value from standard input instead of a prompt.")
def secrets_set(name: str, from_stdin: bool) -> None:
    """Store a secret (asked for with a hidden prompt, or read from --stdin).

    \b
    Examples:
      labelblocks secrets set OPENAI_API_KEY
      printf %s "$KEY" | labelblocks secrets set OPENAI_API_KEY --stdin
    """
    from ..secrets import secrets_path, set_secret

    if from_stdin:
        value = sys.stdin.read().strip()
    else:
        value = click.prompt(f"Value for {name}", hide_input=True, confirmation_prompt=False)
    if not value:
        raise InvalidInput(f"no value given for {name}")
    set_secret(name, value)
    click.echo(f"Stored {name} in {secrets_path()}")


@secrets_group.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
def secrets_list(as_json: bool) -> None:
    """List stored secret names (never their values).

    \b
    Example:
      labelblocks secrets list
    """
    from ..secrets import list_secrets

    rows = list_secrets()
    if as_json:
        print_json([{"name": n, "source": w} for n, w in rows])
        return
    if not rows:
        click.echo("No secrets stored.")
    for n, w in rows:
        click.echo(f"{n}  ({w})")


@secrets_group.command("rm")
@click.argument("name")
def secrets_rm(name: str) -> None:
    """Remove a stored secret.

    \b
    Example:
      labelblocks secrets rm OPENAI_API_KEY
    """
    from ..secrets import remove_secret

    if not remove_secret(name):
        raise InvalidInput(f"no stored secret named {name}")
    click.echo(f"Removed {name}")


def register(group: click.Group) -> None:
    for c in (plugins_cmd, blocks_group, secrets_group):
        group.add_command(c)
