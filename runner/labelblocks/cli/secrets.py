"""``labelblocks secrets ...``: secrets for blocks (API keys), stored outside projects."""

from __future__ import annotations

import sys

import click

from ..errors import InvalidInput
from ._util import print_json


@click.group("secrets")
def secrets_group() -> None:
    """Secrets for blocks (API keys), stored outside projects, readable only by you."""


@secrets_group.command("set")
@click.argument("name")
@click.option("--stdin", "from_stdin", is_flag=True, help="Read the value from standard input instead of a prompt.")
def secrets_set(name: str, from_stdin: bool) -> None:
    """Store a secret (asked for with a hidden prompt, or read from standard input when it is
    piped in or with --stdin).

    \b
    Examples:
      labelblocks secrets set OPENAI_API_KEY
      printf %s "$KEY" | labelblocks secrets set OPENAI_API_KEY --stdin
    """
    from ..secrets import secrets_path, set_secret

    if from_stdin or not sys.stdin.isatty():  # piped in: read it (a hidden prompt needs a terminal)
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
    group.add_command(secrets_group)
