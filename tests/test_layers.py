"""The package's layers hold (import-linter, as pyproject.toml declares them) and no module
needs another to be imported first: each imports alone in a fresh interpreter, so an import
circle cannot hide behind a lazy import."""

from __future__ import annotations

import pkgutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import labelblocks

ROOT = Path(__file__).resolve().parents[1]
# lint-imports, run by the interpreter running the tests (so it reads this checkout's package)
LINT_IMPORTS = [sys.executable, "-c", "from importlinter.cli import lint_imports_command; lint_imports_command()",
                "--no-cache"]


def _modules() -> list[str]:
    names = ["labelblocks"]
    for info in pkgutil.walk_packages(labelblocks.__path__, "labelblocks."):
        if not info.name.endswith("__main__"):
            names.append(info.name)
    return sorted(names)


def test_the_layers_contract_holds() -> None:
    r = subprocess.run(LINT_IMPORTS, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "0 broken" in r.stdout


def test_the_layers_contract_refuses_an_upward_import() -> None:
    """The contract is not vacuous: a store module importing the runner is reported."""
    probe = ROOT / "runner" / "labelblocks" / "store" / "_layer_probe.py"
    probe.write_text("from ..runner import Runner  # noqa: F401\n")
    try:
        r = subprocess.run(LINT_IMPORTS, cwd=ROOT, capture_output=True, text=True, timeout=300)
    finally:
        probe.unlink()
    assert r.returncode != 0
    assert "labelblocks.store._layer_probe -> labelblocks.runner" in r.stdout


def test_every_module_imports_alone_in_a_fresh_interpreter() -> None:
    modules = _modules()
    assert {"labelblocks.store.jobs", "labelblocks.executors.external", "labelblocks.api.raw_data"} <= set(modules)

    def imports(name: str) -> tuple[str, int, str]:
        r = subprocess.run([sys.executable, "-c", f"import {name}"], capture_output=True, text=True, timeout=120)
        return name, r.returncode, r.stderr[-2000:]

    with ThreadPoolExecutor(max_workers=4) as pool:
        failed = [(n, err) for n, rc, err in pool.map(imports, modules) if rc != 0]
    assert failed == []


def test_the_block_authors_face_hands_on_every_name_lazily() -> None:
    """`from labelblocks import Block, ...` works for every name the face lists; importing the
    face loads none of them (the CLI's start-up stays light)."""
    assert set(labelblocks.__all__) == {"__version__", *labelblocks._FACE}
    for name in labelblocks.__all__:
        assert getattr(labelblocks, name) is not None, name
    assert "Block" in dir(labelblocks)
    r = subprocess.run([sys.executable, "-c", "import sys, labelblocks; "
                        "print(sorted(m for m in ('pydantic', 'labelblocks.blocks', 'labelblocks.model') "
                        "if m in sys.modules))"], capture_output=True, text=True, timeout=120)
    assert r.stdout.strip() == "[]", r.stdout + r.stderr
    try:
        labelblocks.Nothing  # noqa: B018
    except AttributeError as e:
        assert "no attribute 'Nothing'" in str(e)
    else:
        raise AssertionError("an unknown name must raise AttributeError")


def test_bundled_blocks_import_only_the_face() -> None:
    """The blocks' contract is an allow-list: a bundled block importing below the face is reported."""
    probe = ROOT / "blocks" / "owlvit" / "labelblocks_owlvit" / "_face_probe.py"
    probe.write_text("from labelblocks.model import Sample  # noqa: F401\n")
    try:
        r = subprocess.run(LINT_IMPORTS, cwd=ROOT, capture_output=True, text=True, timeout=300)
    finally:
        probe.unlink()
    assert r.returncode != 0
    assert "labelblocks_owlvit._face_probe -> labelblocks.model" in r.stdout


def test_an_import_circle_through_a_function_level_import_is_reported() -> None:
    """No module is imported only to be imported alone: two siblings importing each other, one of
    them inside a function, break the acyclic contract."""
    a = ROOT / "runner" / "labelblocks" / "cli" / "_circle_a.py"
    b = ROOT / "runner" / "labelblocks" / "cli" / "_circle_b.py"
    a.write_text("from . import _circle_b  # noqa: F401\n")
    b.write_text("def later() -> None:\n    from . import _circle_a  # noqa: F401\n")
    try:
        r = subprocess.run(LINT_IMPORTS, cwd=ROOT, capture_output=True, text=True, timeout=300)
    finally:
        a.unlink()
        b.unlink()
    assert r.returncode != 0
    assert "no import circles BROKEN" in r.stdout
