"""Organization blocks: scaffolding, pushing, versions, organization secrets, attaching
projects and running pushed blocks, through the real CLI and real servers on loopback."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import socket
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import edgeimpulse_api as ei
import pytest
import requests

from labelblocks.api import LoopbackServer
from labelblocks.errors import InvalidInput
from labelblocks.external_blocks import dockerfile_command
from labelblocks.parameters import load_parameters
from labelblocks.registry import pack as pack_module
from labelblocks.registry.org import init_org
from labelblocks.registry.pack import pack_folder, read_archive
from labelblocks.registry.scaffold import LANGUAGES, OPERATES_ON, init_block
from labelblocks.server.org_app import create_org_app

from .conftest import Cli, fake_docker, make_audio, make_image

# --- scaffolding -------------------------------------------------------------------------------------


@pytest.mark.parametrize("language", LANGUAGES)
@pytest.mark.parametrize("operates_on", OPERATES_ON)
def test_scaffold_writes_a_valid_block(tmp_path: Path, language: str, operates_on: str) -> None:
    folder = tmp_path / "my-block"
    init_block(folder, language, operates_on)
    spec = load_parameters(folder / "parameters.json")
    assert list(spec.info.operates_on) == [operates_on]
    assert [p.param for p in spec.parameters] == ["label"]
    command = dockerfile_command(folder / "Dockerfile")
    assert command == {"python": ["python3", "-u", "main.py"], "typescript": ["node", "build/main.js"],
                       "shell": ["bash", "main.sh"]}[language]
    assert ".env" in (folder / ".labelblocksignore").read_text()
    with pytest.raises(InvalidInput, match="already holds a block"):
        init_block(folder, language, operates_on)


def test_scaffold_refuses_bad_choices(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="language 'rust'"):
        init_block(tmp_path / "a", "rust")
    with pytest.raises(InvalidInput, match="operates-on 'video'"):
        init_block(tmp_path / "a", "python", "video")
    with pytest.raises(InvalidInput, match="block name"):
        init_block(tmp_path / "a", "python", name="../x")


def _dataset(cli: Cli, tmp_path: Path, audio: bool = False) -> None:
    if audio:
        files = [make_audio(tmp_path / "up" / f"clip.{i}.wav", seconds=0.5, seed=i) for i in range(2)]
    else:
        files = [make_image(tmp_path / "up" / f"cat.{i}.png", size=(64, 48), seed=i) for i in range(3)]
    cli("upload", *map(str, files), "--no-label")


def _samples(cli: Cli) -> list[dict[str, Any]]:
    return list(cli.json("samples", "list"))


@pytest.mark.parametrize(("language", "operates_on"), [
    ("python", "images_object_detection"),
    ("shell", "images_single_label"),
    ("typescript", "audio"),
])
def test_scaffold_runs_as_is(cli: Cli, tmp_path: Path, language: str, operates_on: str) -> None:
    """init → blocks add → an action with it passes preview and run, for each language."""
    folder = tmp_path / f"{language}-block"
    cli("blocks", "init", str(folder), "--language", language, "--operates-on", operates_on)
    if language == "typescript":
        for argv in (["npm", "install", "--no-audit", "--no-fund"], ["npm", "run", "build"]):
            done = subprocess.run(argv, cwd=folder, capture_output=True, text=True, timeout=600, check=False)
            assert done.returncode == 0, done.stdout + done.stderr
    _dataset(cli, tmp_path, audio=operates_on == "audio")
    cli("blocks", "add", str(folder))
    name = folder.name
    cli("actions", "create", "try", "--step", name, "-p", "label=thing")
    preview = cli.json("actions", "preview", "try")
    assert len(preview["proposals"]) == len(_samples(cli)) and preview["failed"] == 0
    assert all(p["proposedChanges"]["metadata"]["labeled_by"] == name for p in preview["proposals"])
    assert all("label" not in s and not s.get("boundingBoxes") for s in _samples(cli))  # nothing applied yet
    cli("actions", "run", "try")
    samples = _samples(cli)
    assert all(s["metadata"]["labeled_by"] == name for s in samples)
    if operates_on == "images_object_detection":
        assert all(s["boundingBoxes"] == [{"label": "thing", "x": 16, "y": 12, "width": 32, "height": 24}]
                   for s in samples)
    elif operates_on == "images_single_label":
        assert {s["label"] for s in samples} == {"thing"}
    else:
        assert all(s["structuredLabels"] == [{"startIndex": 0, "endIndex": s["valuesCount"] - 1, "label": "thing"}]
                   for s in samples)


# --- packing -----------------------------------------------------------------------------------------


def _block(folder: Path, version: str = "1", env: tuple[str, ...] = ("MY_TOKEN",)) -> Path:
    """A Python block that proposes metadata: its version, and the length of its secret."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "parameters.json").write_text(json.dumps({
        "version": 1, "type": "ai-action",
        "info": {"name": "Tagger", "description": "Tags samples with its version", "operatesOn": ["other"],
                 "requiredEnvVariables": list(env)},
        "parameters": [{"name": "Tag", "param": "tag", "type": "string", "value": "x"}]}))
    (folder / "Dockerfile").write_text('FROM python:3.11-slim\nCOPY . /app\nENTRYPOINT ["python3", "main.py"]\n')
    (folder / "main.py").write_text(f'''
import argparse, json, os, requests
p = argparse.ArgumentParser()
p.add_argument("--data-ids-file"); p.add_argument("--propose-actions", type=int); p.add_argument("--tag")
a, _ = p.parse_known_args()
ids = json.load(open(a.data_ids_file))
api = os.environ["EI_API_ENDPOINT"] + "/api/" + os.environ["EI_PROJECT_ID"] + "/raw-data"
h = {{"x-api-key": os.environ["EI_PROJECT_API_KEY"]}}
md = {{"block_version": "{version}", "token_length": str(len(os.environ.get("MY_TOKEN", ""))), "tag": a.tag}}
for i in ids:
    r = requests.post(f"{{api}}/{{i}}/propose-changes", headers=h,
                      json={{"jobId": a.propose_actions, "proposedChanges": {{"metadata": md}}}})
    r.raise_for_status()
''')
    return folder


def _names(path: Path) -> list[str]:
    with tarfile.open(path) as tar:
        return sorted(tar.getnames())


def test_pack_leaves_out_git_ignored_and_credential_files(tmp_path: Path) -> None:
    folder = _block(tmp_path / "b")
    for rel in (".git/config", ".env", "certs/server.pem", "id_rsa", "id_rsa.pub", "data/big.bin", "keep.txt",
                "__pycache__/x.pyc", ".labelblocks-block.json"):
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_text("x")
    (folder / ".labelblocksignore").write_text("data/\n# a comment\n")
    packed = pack_folder(folder)
    try:
        assert _names(packed.path) == [".labelblocksignore", "Dockerfile", "keep.txt", "main.py", "parameters.json"]
        assert sorted(packed.credentials_left_out) == [".env", "certs/server.pem", "id_rsa", "id_rsa.pub"]
        again = pack_folder(folder)  # reproducible: the same folder packs to the same hash
        assert again.sha256 == packed.sha256
        again.path.unlink()
    finally:
        packed.path.unlink()


def test_pack_refuses_a_secret_in_parameters_json(tmp_path: Path) -> None:
    folder = _block(tmp_path / "b")
    doc = json.loads((folder / "parameters.json").read_text())
    doc["parameters"][0]["value"] = "sk-live-0123456789abcdef"
    (folder / "parameters.json").write_text(json.dumps(doc))
    with pytest.raises(InvalidInput, match="holds the value of a secret"):
        pack_folder(folder, ["sk-live-0123456789abcdef"])
    doc["parameters"] = [{"name": "Key", "param": "API_KEY", "type": "secret", "value": "hunter22"}]
    (folder / "parameters.json").write_text(json.dumps(doc))
    with pytest.raises(InvalidInput, match="secret parameter 'API_KEY' has a value"):
        pack_folder(folder)


# --- an organization and two projects ----------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class OrgServer:
    """`labelblocks org serve` in a subprocess."""

    def __init__(self, folder: Path, log: Path, path: str | None = None) -> None:
        self.folder, self.log, self.path = folder, log, path
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> OrgServer:
        out = self.log.open("ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "labelblocks", "org", "serve", "--dir", str(self.folder),
                                      "--port", str(self.port)], stdout=out, stderr=subprocess.STDOUT,
                                     env={**os.environ, "PATH": self.path or os.environ["PATH"]})
        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                if requests.get(self.url + "/healthz", timeout=2).ok:
                    return self
            except requests.ConnectionError:
                time.sleep(0.2)
        self.stop()
        raise AssertionError(f"the organization's server did not start:\n{self.log.read_text()}")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=30)
            self.proc = None


@pytest.fixture
def org(tmp_path: Path) -> Iterator[tuple[OrgServer, str, str]]:
    """An organization served on loopback, its admin key and a member's key."""
    cli = Cli(tmp_path / "nowhere")
    made = cli.json("org", "init", str(tmp_path / "org"), "--name", "acme")
    member = cli.json("org", "keys", "create", "bob", "--role", "member", "--dir", str(tmp_path / "org"))
    server = OrgServer(tmp_path / "org", tmp_path / "org.log").start()
    try:
        yield server, made["adminKey"], member["key"]
    finally:
        server.stop()


def _project(tmp_path: Path, name: str) -> Cli:
    from labelblocks.project import init_project

    cli = Cli(init_project(tmp_path / name))
    _dataset(cli, tmp_path / f"{name}-data")
    return cli


def _metadata(cli: Cli) -> list[dict[str, str]]:
    return [s["metadata"] for s in _samples(cli)]


def test_two_projects_run_a_pushed_block_with_its_org_secret(org: tuple[OrgServer, str, str], tmp_path: Path) -> None:
    server, admin, member = org
    engineer = Cli(tmp_path / "nowhere")
    block = _block(tmp_path / "tagger")
    (tmp_path / "token.txt").write_text("tok-0123456789abcdef\n")
    # a member may not push
    r = engineer("blocks", "push", str(block), "--org", server.url, "--key", member, "--env",
                 f"MY_TOKEN=@{tmp_path / 'token.txt'}", expect=1)
    assert "needs an admin key" in r.output
    # without a terminal, a missing secret is named with the option that gives it
    r = engineer("blocks", "push", str(block), "--org", server.url, "--key", admin, expect=1)
    assert "needs the secret MY_TOKEN" in r.output and "--env MY_TOKEN=@FILE" in r.output
    pushed = engineer.json("blocks", "push", str(block), "--org", server.url, "--key", admin, "--env",
                           f"MY_TOKEN=@{tmp_path / 'token.txt'}")
    assert (pushed["name"], pushed["version"], pushed["build"], pushed["secretsSet"]) == ("tagger", 1, "folder",
                                                                                          ["MY_TOKEN"])
    ident = json.loads((block / ".labelblocks-block.json").read_text())
    assert ident["id"] == pushed["id"] and ident["name"] == "tagger"
    assert "tok-0123456789abcdef" not in json.dumps(pushed)
    r = engineer("blocks", "push", str(block), "--org", server.url, "--key", admin, expect=1)
    assert "version 1 of block 'tagger' already holds exactly this content" in r.output

    a, b = _project(tmp_path, "site-a"), _project(tmp_path, "site-b")
    for p in (a, b):
        assert "1 block" in p("org", "attach", server.url, "--key", member).output
        listed = {x["name"]: x for x in p.json("blocks", "list")}
        assert listed["tagger"]["plugin"] == "org:acme" and listed["tagger"]["version"].startswith("acme@1+")
        p("actions", "create", "tag", "--step", "tagger", "-p", "tag=t")
        p("actions", "create", "tag-v1", "--step", "tagger@1", "-p", "tag=pinned")
        preview = p.json("actions", "preview", "tag")
        assert preview["failed"] == 0
        p("actions", "run", "tag")
        assert {(m["block_version"], m["token_length"], m["tag"]) for m in _metadata(p)} == {("1", "20", "t")}

    # version 2: the unpinned action runs it, the pinned one still runs version 1
    (block / "main.py").write_text((block / "main.py").read_text().replace('"block_version": "1"',
                                                                           '"block_version": "2"'))
    assert engineer.json("blocks", "push", str(block), "--org", server.url, "--key", admin)["version"] == 2
    assert b.json("blocks", "info", "tagger")  # B sees version 2 listed, but does not run it
    versions = a.json("blocks", "versions", "tagger")
    assert [v["version"] for v in versions] == [1, 2] and all(len(v["sha256"]) == 64 for v in versions)
    a("actions", "run", "tag")
    assert {m["block_version"] for m in _metadata(a)} == {"2"}
    a("actions", "run", "tag-v1")
    assert {(m["block_version"], m["tag"]) for m in _metadata(a)} == {("1", "pinned")}
    r = a("actions", "create", "tag-v9", "--step", "tagger@9", expect=1)
    assert "organization block tagger (acme) has no version 9 (versions: 1, 2" in r.output
    jobs = a.json("jobs", "list")
    ran = [a.json("jobs", "show", str(j["id"]))["definition"]["steps"][0]["version"] for j in jobs]
    assert any(v.startswith("acme@2+") for v in ran) and any(v.startswith("acme@1+") for v in ran)

    # the organization's server stops: the project still runs the versions it holds
    server.stop()
    assert "unreachable" in a("org", "list").output
    a("actions", "run", "tag")
    assert {(m["block_version"], m["token_length"]) for m in _metadata(a)} == {("2", "20")}
    b("actions", "run", "tag-v1")  # project B holds version 1 (it ran it), with its sealed secret
    assert {(m["block_version"], m["token_length"]) for m in _metadata(b)} == {("1", "20")}
    r = b("actions", "run", "tag", expect=1)  # B never ran version 2 and cannot fetch it now
    assert "cannot be reached" in r.output

    # the secret is nowhere in plain sight: not in the organization's or the projects' files, not in logs
    for root in (tmp_path / "org", tmp_path / "site-a", tmp_path / "site-b"):
        for f in root.rglob("*"):
            if f.is_file():
                assert b"tok-0123456789abcdef" not in f.read_bytes(), f
    assert b"tok-0123456789abcdef" not in (tmp_path / "org.log").read_bytes()
    key_file = tmp_path / "org" / ".labelblocks-org" / "org.key"
    assert key_file.stat().st_mode & 0o777 == 0o600


def test_bindings_read_the_organization_and_roles_hold(org: tuple[OrgServer, str, str], tmp_path: Path) -> None:
    server, admin, member = org
    engineer = Cli(tmp_path / "nowhere")
    block = _block(tmp_path / "tagger")
    r = engineer("blocks", "push", str(block), "--org", server.url, "--key", admin, "--env", "MY_TOKEN=tok-abcdefghijkl",
                 expect=1)
    assert "expected KEY=@FILE" in r.output and "tok-abcdefghijkl" not in r.output
    (tmp_path / "token").write_text("tok-abcdefghijkl")
    engineer("blocks", "push", str(block), "--org", server.url, "--key", admin, "--env", f"MY_TOKEN=@{tmp_path / 'token'}")
    org_id = requests.get(server.url + "/v1/api/organizations", headers={"x-api-key": member}).json()[
        "organizations"][0]["id"]
    api = ei.OrganizationBlocksApi(ei.ApiClient(ei.Configuration(host=server.url + "/v1",
                                                                 api_key={"ApiKeyAuthentication": member})))
    listed = api.list_organization_transformation_blocks(org_id).transformation_blocks
    assert [(b.name, b.show_in_ai_actions, b.ai_actions_operates_on) for b in listed] == [("tagger", True, ["other"])]
    assert [(e.key, e.value) for e in listed[0].environment_variables] == [("MY_TOKEN", None)]
    one = api.get_organization_transformation_block(org_id, listed[0].id).transformation_block
    assert one.parameters[0]["param"] == "tag"
    base = f"{server.url}/v1/api/organizations/{org_id}/transformation/{listed[0].id}"
    # a member can neither read secret names nor set or remove anything; no route returns a value
    assert requests.get(base + "/secrets", headers={"x-api-key": member}).status_code == 403
    assert requests.put(base + "/secrets/MY_TOKEN", headers={"x-api-key": member},
                        json={"value": "x"}).status_code == 403
    assert requests.delete(base, headers={"x-api-key": member}).status_code == 403
    names = requests.get(base + "/secrets", headers={"x-api-key": admin}).json()
    assert names == {"success": True, "secrets": ["MY_TOKEN"]}
    for path in ("", "/versions"):
        assert "tok-abcdefghijkl" not in requests.get(base + path, headers={"x-api-key": member}).text
    assert requests.get(base, headers={"x-api-key": "ei_" + "0" * 64}).status_code == 401
    assert requests.get(base.replace(f"/{org_id}/", "/1/"), headers={"x-api-key": member}).status_code == 404
    # the sealed environment needs an attached project's key to open
    sealed = requests.post(base + "/environment", headers={"x-api-key": member}, json={"attachmentId": 99})
    assert sealed.status_code == 404 and "attach the project" in sealed.json()["error"]
    # pull: a verified copy into a new folder; remove (admin)
    engineer("blocks", "pull", "tagger@1", str(tmp_path / "pulled"), "--org", server.url, "--key", member)
    assert (tmp_path / "pulled" / "main.py").read_text() == (block / "main.py").read_text()
    r = engineer("blocks", "rm", "tagger", "--yes", "--org", server.url, "--key", member, expect=1)
    assert "needs an admin key" in r.output
    engineer("blocks", "rm", "tagger", "--yes", "--org", server.url, "--key", admin)
    assert api.list_organization_transformation_blocks(org_id).transformation_blocks == []
    assert list((tmp_path / "org" / ".labelblocks-org" / "archives").iterdir()) == []


# --- hostile archives ----------------------------------------------------------------------------------


def _tar(members: list[tuple[tarfile.TarInfo, bytes | None]]) -> bytes:
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb", mtime=0) as gz, tarfile.open(fileobj=gz, mode="w") as tar:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def _file(name: str, data: bytes) -> tuple[tarfile.TarInfo, bytes]:
    return tarfile.TarInfo(name), data


def _link(name: str, target: str, kind: bytes = tarfile.SYMTYPE) -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    return info, None


GOOD_PARAMS = json.dumps({"version": 1, "type": "ai-action", "info": {"name": "X", "operatesOn": ["other"]},
                          "parameters": []}).encode()
DOCKERFILE = b'FROM scratch\nENTRYPOINT ["python3", "main.py"]\n'


def _fifo(name: str) -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type = tarfile.FIFOTYPE
    return info, None


HOSTILE = [
    ("dotdot", [_file("parameters.json", GOOD_PARAMS), _file("../evil.py", b"x")], "points outside"),
    ("absolute", [_file("parameters.json", GOOD_PARAMS), _file("/tmp/evil.py", b"x")], "points outside"),
    ("symlink out", [_file("parameters.json", GOOD_PARAMS), _link("passwd", "../../etc/passwd")], "points outside"),
    ("absolute symlink", [_file("parameters.json", GOOD_PARAMS), _link("p", "/etc/passwd")], "points outside"),
    ("hard link out", [_file("parameters.json", GOOD_PARAMS), _link("h", "../x", tarfile.LNKTYPE)], "points outside"),
    ("fifo", [_file("parameters.json", GOOD_PARAMS), _fifo("pipe")], "not a file or folder"),
    ("bomb", [_file("parameters.json", GOOD_PARAMS), _file("zeros.bin", b"\0" * (3 << 20))], "decompression bomb"),
    ("no parameters.json", [_file("main.py", b"x"), _file("Dockerfile", DOCKERFILE)], "no parameters.json"),
    ("invalid parameters.json", [_file("parameters.json", b'{"version": 1, "info": {}}'),
                                 _file("Dockerfile", DOCKERFILE)], "parameters.json"),
    ("not JSON", [_file("parameters.json", b"{oops"), _file("Dockerfile", DOCKERFILE)], "not valid JSON"),
    ("no Dockerfile", [_file("parameters.json", GOOD_PARAMS)], "no Dockerfile"),
]


@pytest.fixture
def org_api(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, dict[str, str], Path]]:
    """An organization's app in this process (so that its limits can be lowered), the
    uploads base URL, an admin's headers and the organization's data folder."""
    monkeypatch.setattr(pack_module, "MAX_UNPACKED", 2 << 20)
    org, key = init_org(tmp_path / "org", "acme")
    org_id = org.info.id
    org.close()
    with LoopbackServer(create_org_app(tmp_path / "org")) as server:
        yield f"{server.url}/api/organizations/{org_id}", {"x-api-key": key}, tmp_path / "org" / ".labelblocks-org"


def _upload(base: str, headers: dict[str, str], data: bytes, sha: str | None = None) -> requests.Response:
    up = requests.post(base + "/uploads", headers=headers, json={
        "name": "evil", "sha256": sha or hashlib.sha256(data).hexdigest(), "size": len(data)}).json()
    got = requests.put(f"{base}/uploads/{up['uploadId']}", params={"offset": 0}, data=data, headers=headers)
    assert got.json()["received"] == len(data)
    return requests.post(f"{base}/uploads/{up['uploadId']}/finalize", headers=headers, json={})


@pytest.mark.parametrize(("case", "members", "message"), HOSTILE, ids=[h[0] for h in HOSTILE])
def test_hostile_archives_are_refused_and_nothing_is_kept(org_api: tuple[str, dict[str, str], Path], case: str,
                                                          members: list[Any], message: str) -> None:
    base, headers, data_dir = org_api
    r = _upload(base, headers, _tar(members))
    assert r.status_code == 400 and message in r.json()["error"], r.text
    assert requests.get(base + "/transformation", headers=headers).json()["transformationBlocks"] == []
    assert list((data_dir / "archives").iterdir()) == [] and list((data_dir / "uploads").iterdir()) == []


def test_upload_checks_hash_and_offsets_and_resumes(org_api: tuple[str, dict[str, str], Path], tmp_path: Path) -> None:
    base, headers, data_dir = org_api
    good = _tar([_file("parameters.json", GOOD_PARAMS), _file("Dockerfile", DOCKERFILE), _file("main.py", b"x")])
    r = _upload(base, headers, good, sha="0" * 64)
    assert r.status_code == 400 and "sha256 mismatch" in r.json()["error"]
    assert not requests.get(base + "/transformation", headers=headers).json()["transformationBlocks"]
    # a resumed upload: half, then ask what arrived, then the rest from there
    up = requests.post(base + "/uploads", headers=headers, json={
        "name": "ok", "sha256": hashlib.sha256(good).hexdigest(), "size": len(good)}).json()
    url = f"{base}/uploads/{up['uploadId']}"
    half = len(good) // 2
    assert requests.put(url, params={"offset": 0}, data=good[:half], headers=headers).json()["received"] == half
    wrong = requests.put(url, params={"offset": 0}, data=good[half:], headers=headers)
    assert wrong.status_code == 400 and f"has {half} bytes" in wrong.json()["error"]
    early = requests.post(url + "/finalize", headers=headers, json={})
    assert early.status_code == 400 and "send the rest" in early.json()["error"]
    up2 = requests.post(base + "/uploads", headers=headers, json={
        "name": "ok", "sha256": hashlib.sha256(good).hexdigest(), "size": len(good)}).json()
    url = f"{base}/uploads/{up2['uploadId']}"
    requests.put(url, params={"offset": 0}, data=good[:half], headers=headers)
    have = requests.get(url, headers=headers).json()["received"]
    requests.put(url, params={"offset": have}, data=good[have:], headers=headers)
    done = requests.post(url + "/finalize", headers=headers, json={}).json()
    assert (done["name"], done["version"], done["build"]) == ("ok", 1, "folder")
    # the stored archive changed on disk: a download is refused
    archive = data_dir / "archives" / f"{done['sha256']}.tar.gz"
    archive.write_bytes(archive.read_bytes() + b"tampered")
    r = requests.get(f"{base}/transformation/{done['id']}/versions/1/download", headers=headers)
    assert r.status_code == 400 and "no longer matches its sha256" in r.json()["error"]


def test_read_archive_accepts_links_inside(tmp_path: Path) -> None:
    data = _tar([_file("parameters.json", GOOD_PARAMS), _file("Dockerfile", DOCKERFILE), _file("lib/a.py", b"x"),
                 _link("b.py", "lib/a.py")])
    (tmp_path / "a.tar.gz").write_bytes(data)
    spec, _, command = read_archive(tmp_path / "a.tar.gz")
    assert spec.info.name == "X" and command == ["python3", "main.py"]


def test_a_tampered_copy_is_fetched_again_or_refused(org: tuple[OrgServer, str, str], tmp_path: Path) -> None:
    server, admin, member = org
    Cli(tmp_path / "nowhere")("blocks", "push", str(_block(tmp_path / "tagger", env=())), "--org", server.url,
                              "--key", admin)
    a = _project(tmp_path, "site-a")
    a("org", "attach", server.url, "--key", member)
    a("actions", "create", "tag", "--step", "tagger")
    a("actions", "run", "tag")
    archive = next((a.project / ".labelblocks" / "org-blocks").rglob("*.tar.gz"))
    archive.write_bytes(b"changed")
    a("actions", "run", "tag")  # fetched again from the organization, hash checked
    assert hashlib.sha256(archive.read_bytes()).hexdigest() == archive.name.split(".")[0]
    archive.write_bytes(b"changed")
    server.stop()
    r = a("actions", "run", "tag", expect=1)
    assert "changed on disk" in r.output and "cannot be reached" in r.output


def test_org_cli_keys_and_show(tmp_path: Path) -> None:
    cli = Cli(tmp_path / "nowhere")
    made = cli.json("org", "init", str(tmp_path / "org"), "--name", "acme")
    assert made["adminKey"].startswith("ei_") and made["name"] == "acme"
    r = cli("org", "init", str(tmp_path / "org"), expect=1)
    assert "already a labelblocks organization" in r.output
    cli("org", "keys", "create", "bob", "--dir", str(tmp_path / "org"))
    keys = cli.json("org", "keys", "list", "--dir", str(tmp_path / "org"))
    assert [(k["name"], k["role"], k["revoked"]) for k in keys] == [("admin", "admin", None), ("bob", "member", None)]
    assert all(made["adminKey"] not in json.dumps(k) for k in keys)
    cli("org", "keys", "revoke", "bob", "--dir", str(tmp_path / "org"))
    shown = cli.json("org", "show", "--dir", str(tmp_path / "org"))
    assert (shown["id"], shown["name"], shown["url"]) == (made["id"], "acme", None)
    assert [k["revoked"] is not None for k in shown["keys"]] == [False, True]
    r = cli("org", "show", "--dir", str(tmp_path / "elsewhere"), expect=1)
    assert "not a labelblocks organization" in r.output


def test_unreachable_or_wrong_organization_is_a_clear_error(cli: Cli, tmp_path: Path) -> None:
    r = cli("org", "attach", f"http://127.0.0.1:{free_port()}", "--key", "ei_x", expect=1)
    assert "cannot reach the organization" in r.output and "ei_x" not in r.output
    r = cli("org", "attach", "ftp://x", "--key", "ei_x", expect=1)
    assert "expected http://HOST:PORT" in r.output
    r = cli("blocks", "push", str(_block(tmp_path / "b")), expect=1)
    assert "which organization?" in r.output



def test_push_builds_an_image_where_a_docker_engine_answers(tmp_path: Path) -> None:
    """The organization builds the pushed folder's image and the push streams its log; a
    failing build keeps nothing."""
    cli = Cli(tmp_path / "nowhere")
    admin = cli.json("org", "init", str(tmp_path / "org"))["adminKey"]
    bin_dir, calls = fake_docker(tmp_path, {})
    server = OrgServer(tmp_path / "org", tmp_path / "org.log", path=f"{bin_dir}:{os.environ['PATH']}").start()
    try:
        block = _block(tmp_path / "tagger", env=())
        r = cli("blocks", "push", str(block), "--org", server.url, "--key", admin)
        assert "build: Step 3/3 : ENTRYPOINT" in r.stderr and "Built the container image" in r.stdout
        got = requests.get(server.url + "/v1/api/organizations", headers={"x-api-key": admin}).json()
        base = f"{server.url}/v1/api/organizations/{got['organizations'][0]['id']}/transformation"
        listed = requests.get(base, headers={"x-api-key": admin}).json()["transformationBlocks"]
        image = listed[0]["dockerContainer"]
        assert image.startswith("labelblocks-org-") and "/tagger:" in image
        assert [c["argv"][:3] for c in map(json.loads, calls.read_text().splitlines())][-1] == ["build", "-t", image]
        (block / "Dockerfile").write_text((block / "Dockerfile").read_text() + "RUN false\n")
        r = cli("blocks", "push", str(block), "--org", server.url, "--key", admin, expect=1)
        assert "docker build failed" in r.output and "returned a non-zero code" in r.output
        assert [v["version"] for v in requests.get(base, headers={"x-api-key": admin}).json()[
            "transformationBlocks"][0]["versions"]] == [1]
        assert len(list((tmp_path / "org" / ".labelblocks-org" / "archives").iterdir())) == 1
    finally:
        server.stop()


def test_a_pushed_typescript_block_is_prepared_and_run_by_a_project(org: tuple[OrgServer, str, str],
                                                                    tmp_path: Path) -> None:
    """A TypeScript block is pushed without node_modules or its build; the project installs
    and builds its copy (as the Dockerfile does) before running it."""
    server, admin, member = org
    engineer = Cli(tmp_path / "nowhere")
    engineer("blocks", "init", str(tmp_path / "ts-tagger"), "--language", "typescript", "--operates-on", "other")
    pushed = engineer.json("blocks", "push", str(tmp_path / "ts-tagger"), "--org", server.url, "--key", admin)
    assert pushed["files"] == 7  # parameters.json, main.ts, package.json, tsconfig.json, Dockerfile, README, ignore
    a = _project(tmp_path, "site-a")
    a("org", "attach", server.url, "--key", member)
    a("actions", "create", "tag", "--step", "ts-tagger", "-p", "label=x")
    a("actions", "run", "tag")
    assert {m["labeled_by"] for m in _metadata(a)} == {"ts-tagger"}
    copy = next((a.project / ".labelblocks" / "org-blocks").glob("*/ts-tagger-v1-*"))
    assert (copy / "build" / "main.js").exists() and (copy / "node_modules" / "edge-impulse-api").is_dir()


@pytest.mark.parametrize(("method", "path", "body"), [
    ("GET", "/transformation/99999999999999999999999", None),
    ("GET", "/transformation/-1", None),
    ("GET", "/transformation/7/versions/0/download", None),
    ("POST", "/transformation", "[1, 2]"),
    ("POST", "/transformation", '{"name": "x", "dockerContainer": "", "parameters": []}'),
    ("POST", "/transformation", '{"name": "x", "dockerContainer": "i:1", "parameters": {"a": 1}}'),
    ("POST", "/uploads", '{"name": "x", "sha256": "zz", "size": 10}'),
    ("POST", "/uploads", '{"name": "../x", "sha256": "' + "0" * 64 + '", "size": 10}'),
    ("POST", "/uploads", '{"name": "x", "sha256": "' + "0" * 64 + '", "size": 1e30}'),
    ("POST", "/uploads", "{oops"),
    ("PUT", "/uploads/nope?offset=0", "x"),
    ("PUT", "/uploads/nope?offset=99999999999999999999999", "x"),
    ("POST", "/uploads/nope/finalize", '{"blockId": 99999999999999999999999}'),
    ("POST", "/transformation/1/environment", '{"attachmentId": true}'),
    ("PUT", "/transformation/1/secrets/BAD-NAME", '{"value": "x"}'),
])
def test_org_routes_answer_bad_requests_with_4xx(org_api: tuple[str, dict[str, str], Path], method: str, path: str,
                                                 body: str | None) -> None:
    base, headers, _ = org_api
    r = requests.request(method, base + path, headers={**headers, "content-type": "application/json"}, data=body)
    assert 400 <= r.status_code < 500 and r.json()["success"] is False, (r.status_code, r.text)


def test_bindings_add_an_image_block(org_api: tuple[str, dict[str, str], Path]) -> None:
    """The protocol's own request adds a block that is a container image (it runs where Docker does)."""
    base, headers, data_dir = org_api
    org_id = int(base.rsplit("/", 1)[1])
    api = ei.OrganizationBlocksApi(ei.ApiClient(ei.Configuration(host=base.split("/api/")[0],
                                                                 api_key={"ApiKeyAuthentication": headers["x-api-key"]})))
    made = api.add_organization_transformation_block(org_id, ei.AddOrganizationTransformationBlockRequest.from_dict({
        "name": "image-block", "dockerContainer": "ghcr.io/acme/block:1", "indMetadata": False,
        "description": "d", "cliArguments": "", "additionalMountPoints": [], "operatesOn": "standalone",
        "parameters": [{"name": "P", "param": "p", "type": "string", "value": "v"}],
        "environmentVariables": [{"key": "ENDPOINT_KEY", "value": "s3cr3t-value-1234"}],
        "aiActionsOperatesOn": ["images_object_detection"]}))
    block = api.get_organization_transformation_block(org_id, made.id).transformation_block
    assert (block.docker_container, block.ai_actions_operates_on) == ("ghcr.io/acme/block:1", ["images_object_detection"])
    assert [(e.key, e.value) for e in block.environment_variables] == [("ENDPOINT_KEY", None)]
    assert b"s3cr3t-value-1234" not in b"".join(f.read_bytes() for f in data_dir.rglob("*") if f.is_file())
