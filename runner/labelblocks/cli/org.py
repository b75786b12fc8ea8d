"""``labelblocks org``: an organization that shares blocks (init, serve, show, keys), and a
project's attachment to one (attach, detach, list)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from ..errors import InvalidInput
from ._util import AppContext, pass_app, print_json

DIR_OPTION = click.option("--dir", "org_dir", metavar="DIR", envvar="LABELBLOCKS_ORG_DIR",
                          help="The organization's folder (default: the current folder or the nearest parent "
                               "holding one).")


@click.group("org")
def org_group() -> None:
    """An organization: blocks pushed once, run by every attached project."""


@org_group.command("init")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@click.option("--name", default="", help="The organization's name (default: the folder's).")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
def org_init(directory: Path, name: str, as_json: bool) -> None:
    """Make DIRECTORY an organization and print its first admin key (shown once).

    \b
    Example:
      ADMIN=$(labelblocks org init ~/acme-org --name acme)
      labelblocks org serve --dir ~/acme-org --port 4900
    """
    from ..registry.org import init_org

    org, key = init_org(directory, name)
    with org:
        info = {"id": org.info.id, "name": org.info.name, "folder": str(org.folder), "adminKey": key}
    if as_json:
        print_json(info)
        return
    click.echo(key)
    click.echo(f"Organization {info['name']} (id {info['id']}) made in {info['folder']}. Above is its first admin "
               "key, shown only now: store it somewhere safe.", err=True)
    click.echo(f"Next: labelblocks org serve --dir {info['folder']}", err=True)


@org_group.command("serve")
@DIR_OPTION
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=4900, show_default=True, type=click.IntRange(0, 65535), help="Port to listen on.")
def org_serve(org_dir: str | None, host: str, port: int) -> None:
    """Serve the organization's API until interrupted (Ctrl-C).

    \b
    Example:
      labelblocks org serve --dir ~/acme-org --port 4900
    """
    from ..registry.org import find_org
    from ..server.org_app import serve_org

    folder = find_org(org_dir)
    click.echo(f"Serving organization {folder} at http://{host}:{port}/v1", err=True)
    serve_org(folder, host, port)


@org_group.command("show")
@DIR_OPTION
@click.option("--url", default="", help="The URL it is served at (default: found when `org serve` runs here).")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
def org_show(org_dir: str | None, url: str, as_json: bool) -> None:
    """Show the organization: id, name, URL, blocks and keys (never key values).

    \b
    Example:
      labelblocks org show --dir ~/acme-org --json
    """
    from ..api.background import running_url
    from ..registry.org import Organization, find_org
    from ..store.organizations import list_org_keys

    with Organization(find_org(org_dir)) as org:
        blocks = org.blocks()
        keys = list_org_keys(org.store)
        info: dict[str, Any] = {"id": org.info.id, "name": org.info.name, "folder": str(org.folder),
                                "url": url or running_url(org.data), "keys": [k.to_json() for k in keys],
                                "blocks": [{"id": b.id, "name": b.name, "versions": len(b.versions)} for b in blocks]}
    if as_json:
        print_json(info)
        return
    where = f" at {info['url']}" if info["url"] else " (not being served)"
    click.echo(f"Organization {info['name']} (id {info['id']}) in {info['folder']}{where}")
    click.echo(f"Blocks: {', '.join(f'{b.name} (v{len(b.versions)})' for b in blocks) or 'none'}")
    click.echo(f"Keys: {sum(1 for k in keys if k.revoked_at is None)} active")


@org_group.group("keys")
def org_keys() -> None:
    """Members' keys: admin (push, remove, secrets) or member (list, pull, run)."""


@org_keys.command("create")
@click.argument("name")
@click.option("--role", type=click.Choice(["admin", "member"]), default="member", show_default=True)
@DIR_OPTION
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
def org_keys_create(name: str, role: str, org_dir: str | None, as_json: bool) -> None:
    """Create a key (printed once; the organization keeps only its hash).

    \b
    Example:
      KEY=$(labelblocks org keys create alice --role admin)
    """
    from ..registry.org import Organization, find_org
    from ..store.organizations import create_org_key

    with Organization(find_org(org_dir)) as org:
        record, key = create_org_key(org.store, name, role)
    if as_json:
        print_json({**record.to_json(), "key": key})
        return
    click.echo(key)
    click.echo(f"Created {role} key {record.name} (id {record.id}). It is shown only now: store it somewhere safe.",
               err=True)


@org_keys.command("list")
@DIR_OPTION
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
def org_keys_list(org_dir: str | None, as_json: bool) -> None:
    """List keys (their first characters only).

    \b
    Example:
      labelblocks org keys list
    """
    from ..registry.org import Organization, find_org
    from ..store.organizations import list_org_keys

    with Organization(find_org(org_dir)) as org:
        keys = list_org_keys(org.store)
    if as_json:
        print_json([k.to_json() for k in keys])
        return
    for k in keys:
        click.echo(f"{k.id:>3}  {k.name:<20} {k.role:<7} {k.prefix}…  {'revoked' if k.revoked_at else 'active'}")


@org_keys.command("revoke")
@click.argument("key")
@DIR_OPTION
def org_keys_revoke(key: str, org_dir: str | None) -> None:
    """Revoke a key by id, name or shown prefix.

    \b
    Example:
      labelblocks org keys revoke alice
    """
    from ..registry.org import Organization, find_org
    from ..store.organizations import revoke_org_key

    with Organization(find_org(org_dir)) as org:
        k = revoke_org_key(org.store, key)
    click.echo(f"Revoked key {k.name} (id {k.id})")


@org_group.command("attach")
@click.argument("url")
@click.option("--key", envvar="LABELBLOCKS_ORG_KEY", help="A member's key (or LABELBLOCKS_ORG_KEY).")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@pass_app
def org_attach(app: AppContext, url: str, key: str | None, as_json: bool) -> None:
    """Attach this project to an organization: its blocks appear in `blocks list` and run
    like any block. The key is kept in your secrets file, not in the project.

    \b
    Example:
      labelblocks org attach http://127.0.0.1:4900 --key ei_...
    """
    from ..registry.project import attach

    if not key:
        raise InvalidInput("no organization key: pass --key KEY (a member's key), or set LABELBLOCKS_ORG_KEY")
    link = attach(app.store, app.project_dir.name, url, key)
    if as_json:
        print_json({"id": link.org_id, "name": link.name, "url": link.url, "blocks": len(link.catalogue)})
        return
    click.echo(f"Attached to organization {link.name} (id {link.org_id}) at {link.url}: "
               f"{len(link.catalogue)} block{'s' if len(link.catalogue) != 1 else ''}")


@org_group.command("detach")
@click.argument("org")
@pass_app
def org_detach(app: AppContext, org: str) -> None:
    """Detach this project from an organization (by id, name or URL).

    \b
    Example:
      labelblocks org detach acme
    """
    from ..registry.project import detach

    link = detach(app.store, org)
    click.echo(f"Detached from organization {link.name} (id {link.org_id})")


@org_group.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@pass_app
def org_list(app: AppContext, as_json: bool) -> None:
    """The organizations this project is attached to, and whether they answer now.

    \b
    Example:
      labelblocks org list
    """
    from ..registry.project import refresh

    rows: list[dict[str, Any]] = [{"id": link.org_id, "name": link.name, "url": link.url, "blocks": [b["name"] for b in link.catalogue],
             "reachable": why is None, "error": why} for link, why in refresh(app.store)]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        click.echo("Not attached to any organization: `labelblocks org attach URL --key KEY`")
    for r in rows:
        state = "reachable" if r["reachable"] else f"unreachable ({r['error']})"
        click.echo(f"{r['name']} (id {r['id']}) at {r['url']}: {state}; blocks: {', '.join(r['blocks']) or 'none'}")


def register(group: click.Group) -> None:
    group.add_command(org_group)
