"""``labelblocks keys ...``: the project's API keys for the HTTP API."""

from __future__ import annotations

from datetime import datetime

import click

from ._util import AppContext, pass_app, print_json


@click.group("keys")
def keys_group() -> None:
    """Project API keys for the HTTP API (`labelblocks serve`)."""


@keys_group.command("create")
@click.option("--name", default="", help="A name to tell the key apart (default: its creation time).")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@pass_app
def keys_create(app: AppContext, name: str, as_json: bool) -> None:
    """Create a project API key and print it once: only its hash is kept.

    \b
    Example:
      KEY=$(labelblocks keys create --name ci --json | jq -r .key)
    """
    from ..store.keys import create_key

    rec, key = create_key(app.store, name)
    if as_json:
        print_json({**rec.to_json(), "key": key})
        return
    click.echo(key)
    click.echo(f"Key {rec.id} ({rec.name}) created. It is shown only now: store it somewhere safe.", err=True)


@keys_group.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@pass_app
def keys_list(app: AppContext, as_json: bool) -> None:
    """List the project's keys (their first characters, never the keys).

    \b
    Example:
      labelblocks keys list
    """
    from ..store.keys import list_keys

    keys = list_keys(app.store)
    if as_json:
        print_json([k.to_json() for k in keys])
        return
    if not keys:
        click.echo("No keys: create one with `labelblocks keys create`.")
    for k in keys:
        when = datetime.fromtimestamp(k.created_at).strftime("%Y-%m-%d %H:%M")
        status = "revoked" if k.revoked_at else "active"
        click.echo(f"{k.id:>4}  {k.prefix}...  {status:<8} {when}  {k.name}")


@keys_group.command("revoke")
@click.argument("key")
@pass_app
def keys_revoke(app: AppContext, key: str) -> None:
    """Revoke a key (by id, name or its shown first characters): it stops working at once.

    \b
    Example:
      labelblocks keys revoke 2
    """
    from ..store.keys import revoke_key

    k = revoke_key(app.store, key)
    click.echo(f"Revoked key {k.id} ({k.name}).")


def register(group: click.Group) -> None:
    group.add_command(keys_group)
