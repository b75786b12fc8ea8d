"""The Dockerfile and the team setup's docker-compose.yml (no Docker engine runs here: what
can be checked without one is checked)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import yaml
from click.testing import CliRunner

from labelblocks.cli import main

REPO = Path(__file__).resolve().parent.parent


def test_the_image_installs_every_block_and_the_team_extras() -> None:
    dockerfile = (REPO / "Dockerfile").read_text()
    install = next(line for line in dockerfile.splitlines() if "pip install" in line)
    for block in sorted(p.name for p in (REPO / "blocks").iterdir() if (p / "pyproject.toml").exists()):
        assert f"-e blocks/{block}" in install, block
    assert '-e ".[s3,postgres,ray]"' in install


def test_compose_keeps_secrets_out_and_runs_real_commands() -> None:
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    services = compose["services"]
    assert set(services) >= {"postgres", "minio", "labelblocks", "ray-head", "ray-worker"}
    # the Ray cluster runs the image's own Ray (the version the extra pins), head and worker joined
    head, worker = services["ray-head"], services["ray-worker"]
    assert head["build"] == worker["build"] == services["labelblocks"]["build"] == "."
    port = head["command"][head["command"].index("--port") + 1]
    assert worker["command"][worker["command"].index("--address") + 1] == f"ray-head:{port}"
    assert f"--ray-address ray-head:{port}" in (REPO / "docker-compose.yml").read_text()
    for name, service in services.items():
        for key, value in (service.get("environment") or {}).items():
            if re.search(r"PASSWORD|SECRET", key):
                assert str(value).startswith("${"), f"{name}: {key} is written in the file"
    script = services["labelblocks"]["command"][0]
    init = script.split("||", 1)[1].split(";", 1)[0]
    serve = script.split("exec ", 1)[1]
    runner = CliRunner()
    for command in (init, serve):
        argv = shlex.split(command)
        assert argv[0] == "labelblocks"
        # every option the compose file passes exists (asking for help parses them all, and runs nothing)
        r = runner.invoke(main, [*argv[1:], "--help"])
        assert r.exit_code == 0, r.output
    assert "--database postgresql+psycopg://labeler@postgres:5432/team" in init and "--blobs s3://" in init
