"""``labelblocks blocks init|push|versions|pull|rm``: making a block and sharing it through an
organization."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from ..errors import InvalidInput
from ._util import AppContext, is_interactive, pass_app, print_json, progress
from .blocks import blocks_group

if TYPE_CHECKING:
    from ..registry.client import OrgClient

ORG_OPTION = click.option("--org", "org_url", envvar="LABELBLOCKS_ORG_URL", metavar="URL",
                          help="The organization's URL (or LABELBLOCKS_ORG_URL; default: the one this project is "
                               "attached to).")
KEY_OPTION = click.option("--key", envvar="LABELBLOCKS_ORG_KEY", help="Your organization key (or LABELBLOCKS_ORG_KEY).")


def _client(app: AppContext, org_url: str | None, key: str | None) -> OrgClient:
    """The organization named by --org/--key, else the one this project is attached to."""
    from ..errors import ProjectNotFound
    from ..registry.client import OrgClient
    from ..registry.project import client_for
    from ..store.organizations import list_links

    if org_url:
        if not key:
            raise InvalidInput("no organization key: pass --key KEY, or set LABELBLOCKS_ORG_KEY")
        return OrgClient(org_url, key)
    try:
        links = list_links(app.store)
    except ProjectNotFound:
        links = []
    if len(links) != 1:
        raise InvalidInput("which organization? pass --org URL --key KEY (or set LABELBLOCKS_ORG_URL and "
                           "LABELBLOCKS_ORG_KEY)" + (f"; this project is attached to {len(links)}" if links else ""))
    if key:
        return OrgClient(links[0].url, key)
    return client_for(links[0])


@blocks_group.command("init")
@click.argument("directory", required=False, default=".", type=click.Path(file_okay=False, path_type=Path))
@click.option("--language", type=click.Choice(["python", "typescript", "shell"]), default="python", show_default=True)
@click.option("--operates-on", type=click.Choice(["images_object_detection", "images_single_label", "audio", "other"]),
              default="images_single_label", show_default=True, help="What data the block labels.")
@click.option("--name", help="The block's name (default: the folder's).")
def blocks_init(directory: Path, language: str, operates_on: str, name: str | None) -> None:
    """Write a new protocol block that runs as it is: parameters.json, a main program using
    the protocol's bindings, a Dockerfile, a .labelblocksignore and a README.

    \b
    Examples:
      labelblocks blocks init my-labeler --operates-on images_object_detection
      labelblocks blocks init audio-tagger --language typescript --operates-on audio
    """
    from ..registry.scaffold import init_block

    files = init_block(directory, language, operates_on, name)
    click.echo(f"Wrote a {language} block in {directory}: {', '.join(p.name for p in files)}")
    if language == "typescript":
        click.echo(f"Next: (cd {directory} && npm install && npm run build), then `labelblocks blocks add {directory}`")
    else:
        click.echo(f"Next: `labelblocks blocks add {directory}` in a project, or `labelblocks blocks push {directory}`")


def _env_values(items: tuple[str, ...]) -> dict[str, str]:
    """--env KEY=@FILE: the file's text, trailing newline removed (a value itself is never
    taken from the command line, where shells and process listings keep it)."""
    out: dict[str, str] = {}
    for item in items:
        k, sep, v = item.partition("=")
        if not sep or not k or not v.startswith("@") or len(v) < 2:
            raise InvalidInput(f"--env {k or item}: expected KEY=@FILE (the value in a file; a secret on the command "
                               "line would stay in your shell's history)")
        try:
            out[k] = Path(v[1:]).expanduser().read_text(encoding="utf-8").rstrip("\r\n")
        except OSError as e:
            raise InvalidInput(f"--env {k}: cannot read {v[1:]}: {e.strerror or e}") from None
        if not out[k]:
            raise InvalidInput(f"--env {k}: {v[1:]} is empty")
    return out


@blocks_group.command("push")
@click.argument("directory", required=False, default=".", type=click.Path(file_okay=False, exists=True, path_type=Path))
@ORG_OPTION
@KEY_OPTION
@click.option("--name", help="The block's name in the organization (default: from parameters.json).")
@click.option("--env", "env_items", multiple=True, metavar="KEY=@FILE",
              help="A secret of the block (its requiredEnvVariables), kept encrypted by the organization (repeat).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@pass_app
def blocks_push(app: AppContext, directory: Path, org_url: str | None, key: str | None, name: str | None,
                env_items: tuple[str, ...], as_json: bool) -> None:
    """Push a block folder to the organization as a new immutable version. The first push
    asks for the block's requiredEnvVariables (or take --env) and writes
    .labelblocks-block.json, so the next push from this folder makes the next version.

    \b
    Examples:
      labelblocks blocks push my-labeler --org http://127.0.0.1:4900 --key ei_...
      labelblocks blocks push --env MODEL_ENDPOINT_KEY=@key.txt
    """
    from ..parameters import load_parameters
    from ..registry.client import read_identity, write_identity
    from ..registry.org import check_block_name, slug
    from ..registry.pack import pack_folder
    from ..secrets import get_secret, list_secrets

    folder = directory.resolve()
    if not (folder / "parameters.json").is_file():
        raise InvalidInput(f"{folder} has no parameters.json: is it a block folder? (`labelblocks blocks init` makes one)")
    spec = load_parameters(folder / "parameters.json")
    client = _client(app, org_url, key)
    org = client.organization()
    ident = read_identity(folder)
    if ident and ident.get("organizationId") != org["id"]:
        raise InvalidInput(f"{folder} was pushed to organization {ident.get('organizationId')}, not {org['id']} "
                           f"({org['name']}): delete .labelblocks-block.json to push it there as a new block")
    block_name = check_block_name(name or (ident or {}).get("name") or slug(spec.info.name))
    block_id = ident["id"] if ident else None
    env = _env_values(env_items)
    have = set(client.secret_names(block_id)) if block_id is not None else set()
    for secret in spec.info.required_env_variables:
        if secret in env or secret in have:
            continue
        if not (is_interactive() and sys.stdin.isatty()):
            raise InvalidInput(f"block {block_name} needs the secret {secret} (requiredEnvVariables): pass --env "
                               f"{secret}=@FILE, or push from a terminal to be asked")
        env[secret] = click.prompt(f"Value for {secret} (kept encrypted by the organization)", hide_input=True)
    stored = [v for n, _ in list_secrets() if (v := get_secret(n))]
    packed = pack_folder(folder, [*stored, *env.values()])
    try:
        with progress(packed.size, f"pushing {block_name}", enabled=not as_json) as advance:
            sent = [0]

            def on_progress(done: int, total: int) -> None:
                advance(done - sent[0])
                sent[0] = done

            result = client.push(packed, block_name, block_id, env, on_progress,
                                 on_log=None if as_json else lambda line: click.echo(f"build: {line}", err=True))
    finally:
        packed.path.unlink(missing_ok=True)
    write_identity(folder, {"organizationId": org["id"], "organization": org["name"], "url": client.display,
                            "id": result["id"], "name": result["name"]})
    out: dict[str, Any] = {**result, "files": len(packed.files), "size": packed.size,
                           "credentialsLeftOut": packed.credentials_left_out}
    if as_json:
        print_json(out)
        return
    for line in packed.credentials_left_out:
        click.echo(f"left out (looks like a credential file): {line}", err=True)
    click.echo(f"Pushed {result['name']} version {result['version']} to {org['name']} ({len(packed.files)} files, "
               f"{packed.size:,} bytes, sha256 {str(result['sha256'])[:12]}…)")
    if result["build"] == "image":
        click.echo(f"Built the container image {result['image']}; projects with a Docker engine run it.")
    else:
        click.echo("No Docker engine on the organization's server: the block runs as its folder and command.")
    if result.get("secretsSet"):
        click.echo(f"Secrets set: {', '.join(result['secretsSet'])}")


@blocks_group.command("versions")
@click.argument("name")
@ORG_OPTION
@KEY_OPTION
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@pass_app
def blocks_versions(app: AppContext, name: str, org_url: str | None, key: str | None, as_json: bool) -> None:
    """List an organization block's versions.

    \b
    Example:
      labelblocks blocks versions my-labeler
    """
    block = _client(app, org_url, key).block(name)
    versions = block["versions"]
    if as_json:
        print_json(versions)
        return
    for v in versions:
        click.echo(f"v{v['version']:<4} {v['created']}  {v['build']:<6} {str(v['sha256'] or v['image'])[:16]}  "
                   f"{v['size']:>10,} bytes  by {v['pushedBy']}")


@blocks_group.command("pull")
@click.argument("name")
@click.argument("directory", required=False, type=click.Path(file_okay=False, path_type=Path))
@ORG_OPTION
@KEY_OPTION
@pass_app
def blocks_pull(app: AppContext, name: str, directory: Path | None, org_url: str | None, key: str | None) -> None:
    """Download an organization block's version (NAME or NAME@VERSION; its sha256 checked)
    into DIRECTORY (default: ./NAME).

    \b
    Example:
      labelblocks blocks pull my-labeler@2 ./my-labeler-v2
    """
    from ..registry.pack import unpack

    base, _, ver = name.partition("@")
    client = _client(app, org_url, key)
    block = client.block(base)
    versions = block["versions"]
    if ver and not ver.isdigit():
        raise InvalidInput(f"{name!r}: expected NAME or NAME@VERSION (a number)")
    chosen = next((v for v in versions if str(v["version"]) == ver), None) if ver else (versions[-1] if versions else None)
    if chosen is None or not chosen["sha256"]:
        raise InvalidInput(f"block {base} has no version {ver or '(none pushed)'} with a folder to pull "
                           f"(versions: {', '.join(str(v['version']) for v in versions) or 'none'})")
    dest = (directory or Path(base)).resolve()
    if dest.exists() and any(dest.iterdir()):
        raise InvalidInput(f"{dest} exists and is not empty: pull into a new folder")
    if dest.exists():
        dest.rmdir()
    archive = client.download(int(block["id"]), int(chosen["version"]), str(chosen["sha256"]), dest.parent)
    try:
        unpack(archive, dest)
    finally:
        archive.unlink(missing_ok=True)
    click.echo(f"Pulled {base} version {chosen['version']} into {dest}")


@blocks_group.command("rm")
@click.argument("name")
@ORG_OPTION
@KEY_OPTION
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@pass_app
def blocks_rm(app: AppContext, name: str, org_url: str | None, key: str | None, yes: bool) -> None:
    """Remove a block, all its versions and secrets, from the organization (admin key).
    Attached projects stop listing and running it once they see the organization's new list.
    (`blocks remove` unregisters a local external block.)

    \b
    Example:
      labelblocks blocks rm my-labeler --yes
    """
    client = _client(app, org_url, key)
    block = client.block(name)
    if not yes and not click.confirm(f"Remove {block['name']} and its {len(block['versions'])} versions from the "
                                     "organization?", default=False):
        raise click.Abort()
    client.remove(int(block["id"]))
    click.echo(f"Removed {block['name']} from the organization")


def register(group: click.Group) -> None:
    """The commands attach to the ``blocks`` group when this module is imported."""
