"""The README runs as written: its ```bash blocks, in order, in one shell, in a folder laid out
like a fresh clone (examples/ and parameters/ beside the commands), offline. Model steps load
tiny random-initialised checkpoints of the real architectures, put in a Hugging Face cache
under the real model ids (so the blocks' default `model` resolves from the cache, as it does
on a machine that downloaded the weights once); GPT-4o steps ask a local server that behaves
like the OpenAI API. A ```sh block is an illustration that needs what a test machine lacks
(a Docker engine and a registry), and is not run."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.blocks.openai_emulator import KEY, Emulator
from tests.blocks.tiny_models import make_ast, make_clip, make_owl

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"


def bash_blocks() -> list[str]:
    return re.findall(r"```bash\n(.*?)```", README.read_text(), flags=re.S)


def test_the_setup_commands_are_what_ci_runs() -> None:
    setup = [line for line in bash_blocks()[0].splitlines() if line.strip()]
    ci = [line for line in (REPO / ".ci" / "run").read_text().splitlines()
          if line.strip() and not line.startswith(("#", "set ", "cd ", ".ci/debian-packages"))]
    assert setup == ci and len(setup) == 2
    assert "labelblocks demo" in setup[0] and "pytest" in setup[1]


def hub_cache(root: Path, model_id: str, build: object) -> None:
    """``build(folder)`` saved as the Hugging Face cache holds a downloaded ``model_id``."""
    snapshot = "0" * 40
    repo = root / ("models--" + model_id.replace("/", "--"))
    folder = repo / "snapshots" / snapshot
    build(folder)  # type: ignore[operator]
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(snapshot)


@pytest.fixture(scope="module")
def hf_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("hf-hub")
    hub_cache(root, "google/owlvit-base-patch32", make_owl)
    hub_cache(root, "MIT/ast-finetuned-audioset-10-10-0.4593", make_ast)
    hub_cache(root, "openai/clip-vit-base-patch32", make_clip)
    return root


def test_readme_runs_as_written(tmp_path: Path, hf_cache: Path) -> None:
    clone = tmp_path / "clone"
    clone.mkdir()
    for folder in ("examples", "parameters"):
        shutil.copytree(REPO / folder, clone / folder, ignore=shutil.ignore_patterns("__pycache__"))
    blocks = bash_blocks()[1:]  # the first is the set-up (install, tests): CI runs it
    script = "set -euo pipefail\n" + "\n".join(blocks)
    with Emulator() as emu:
        env = {**os.environ, "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
               "HF_HUB_CACHE": str(hf_cache), "HF_HUB_OFFLINE": "1", "OPENAI_BASE_URL": emu.base_url,
               "LABELBLOCKS_CONFIG_DIR": str(tmp_path / "config"), "PYTHONUNBUFFERED": "1"}
        env.pop("OPENAI_API_KEY", None)  # the README's `secrets set` provides it (read from the prompt)
        proc = subprocess.run(["bash", "-c", script], cwd=clone, env=env, input=KEY + "\n", text=True,
                              capture_output=True, timeout=900)
        assert proc.returncode == 0, f"the README stopped (exit {proc.returncode}):\n{proc.stdout[-6000:]}\n" \
                                     f"{proc.stderr[-6000:]}"
        assert emu.ok > 0 and emu.problems == []
    project = clone / "my-dataset"

    def cli(*args: str) -> object:
        out = subprocess.run([sys.executable, "-m", "labelblocks", "--project", str(project), *args, "--json"],
                             capture_output=True, text=True, env=env, check=True).stdout
        return json.loads(out)

    jobs = cli("jobs", "list")
    assert isinstance(jobs, list) and {j["action"] for j in jobs} >= {"clean", "boxes", "vehicles", "tags", "mixed",
                                                                      "dedup"}
    samples = cli("samples", "list", "--include-disabled")
    assert isinstance(samples, list) and len(samples) == 31  # 24 images, 6 clips, 1 image over HTTP
    assert any(s["metadata"].get("ai-labeled") == "true" for s in samples)
    assert any(s.get("structuredLabels") for s in samples if s["filename"].endswith(".wav"))
    assert KEY not in proc.stdout + proc.stderr
    # the quality flow: OWL-ViT evaluated per site on reviewed boxes, its suggested thresholds applied
    quality = clone / "quality"
    assert "by site (worst first)" in proc.stdout and "mAP@50" in proc.stdout
    assert (quality / "shapes-report" / "index.html").is_file()
    shapes = json.loads(subprocess.run([sys.executable, "-m", "labelblocks", "--project", str(quality), "actions",
                                        "show", "shapes", "--json"], capture_output=True, text=True, env=env,
                                       check=True).stdout)
    prompt = shapes["steps"][0]["parameters"]["prompt"]
    # tiny random weights may find no true box at any threshold: then nothing is suggested, and
    # nothing changes (test_evaluate applies suggestions of a detector that finds some)
    if "From the evaluation of job" in proc.stdout:
        assert prompt != "a square (square, 0.05)\na circle (circle, 0.05)"
    else:
        assert "suggests no change to action shapes: no recorded score finds a true one" in proc.stdout
        assert prompt == "a square (square, 0.05)\na circle (circle, 0.05)"
