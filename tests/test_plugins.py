from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from labelblocks import plugins
from labelblocks.cli import main
from labelblocks.errors import PluginError
from labelblocks.secrets import secrets_path

from .conftest import make_fake_distribution


def _cli(*args: str, env: dict[str, str] | None = None, input: str | None = None):
    return CliRunner().invoke(main, list(args), env=env, input=input)


def test_blocks_list_finds_entry_point_plugin_with_version() -> None:
    r = _cli("blocks", "list", "--json")
    assert r.exit_code == 0, r.output
    blocks = {b["name"]: b for b in json.loads(r.stdout)}
    assert blocks["fake-boxer"]["plugin"] == "fakeblocks" and blocks["fake-boxer"]["version"] == "1.2.3"
    assert blocks["near-duplicates"]["plugin"] == "labelblocks (built-in)"
    assert blocks["fake-boxer"]["operatesOn"] == ["images_object_detection"]
    r = _cli("plugins", "--json")
    info = {p["name"]: p for p in json.loads(r.stdout)}
    assert info["fakeblocks"]["blocks"] == ["fake-labeler", "fake-boxer", "fake-renamer", "fake-fail", "fake-leaky", "fake-constant",
                                                "fake-meddler", "fake-detector", "fake-tagger", "fake-noter"]


def test_blocks_info_lists_parameters_and_secrets() -> None:
    r = _cli("blocks", "info", "fake-labeler")
    assert r.exit_code == 0
    assert "-p prefix=...  string (default: 'L-')" in r.output
    assert "FAKE_TOKEN" in r.output
    data = json.loads(_cli("blocks", "info", "fake-labeler", "--json").stdout)
    assert data["secrets"] == ["FAKE_TOKEN"]
    assert [p["param"] for p in data["parameters"]] == ["prefix", "delay", "batch-size", "FAKE_TOKEN"]
    r = _cli("blocks", "info", "nope")
    assert r.exit_code == 1 and "no block named 'nope'" in r.output


@pytest.fixture
def broken_plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "broken"
    root.mkdir()
    (root / "broken_plugin_mod.py").write_text("raise ImportError('missing dependency frobnicate')\n")
    make_fake_distribution(root, name="brokenplugin", module="broken_plugin_mod", version="0.1")
    monkeypatch.syspath_prepend(str(root))
    plugins.reset()
    return root


def test_broken_plugin_does_not_break_blocks_list(broken_plugin: Path, caplog: pytest.LogCaptureFixture) -> None:
    r = _cli("blocks", "list")
    assert r.exit_code == 0
    assert "fake-boxer" in r.output
    assert "brokenplugin" in caplog.text and "frobnicate" in caplog.text
    r = _cli("plugins")
    assert "brokenplugin 0.1" in r.output and "FAILED: ImportError: missing dependency frobnicate" in r.output


def test_broken_plugin_fatal_when_asked(broken_plugin: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LABELBLOCKS_RAISE_PLUGIN_ERRORS", "1")
    r = _cli("blocks", "list")
    assert r.exit_code == 1
    assert "plugin brokenplugin (broken_plugin_mod) failed to load" in r.output


def test_broken_plugin_reported_on_stderr_in_subprocess(broken_plugin: Path, fake_plugin: Path) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(broken_plugin), os.environ["PYTHONPATH"]])}
    r = subprocess.run([sys.executable, "-m", "labelblocks", "blocks", "list"], capture_output=True, text=True, env=env)
    assert r.returncode == 0
    assert "fake-boxer" in r.stdout
    assert "brokenplugin" in r.stderr and "failed to load" in r.stderr


def test_allow_list(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LABELBLOCKS_LOAD_PLUGINS", "")
    names = [b["name"] for b in json.loads(_cli("blocks", "list", "--json").stdout)]
    assert names == ["anomaly", "near-duplicates", "relabel"]
    plugins.reset()
    monkeypatch.setenv("LABELBLOCKS_LOAD_PLUGINS", "fakeblocks")
    names = [b["name"] for b in json.loads(_cli("blocks", "list", "--json").stdout)]
    assert "fake-boxer" in names


def test_misspelled_hook_is_caught(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "typo"
    root.mkdir()
    (root / "typo_mod.py").write_text(
        "from labelblocks.hookspecs import hookimpl\n@hookimpl\ndef register_block(register):\n    pass\n")
    make_fake_distribution(root, name="typoplugin", module="typo_mod")
    monkeypatch.syspath_prepend(str(root))
    plugins.reset()
    with pytest.raises(Exception, match="register_block"):
        plugins.get_plugins()


def test_duplicate_block_name_refused_loudly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                            caplog: pytest.LogCaptureFixture) -> None:
    root = tmp_path / "dup"
    root.mkdir()
    (root / "dup_mod.py").write_text(
        "from labelblocks.hookspecs import hookimpl\nfrom tests.fake_blocks import FakeBoxer\n"
        "@hookimpl\ndef register_blocks(register):\n    register(FakeBoxer)\n")
    make_fake_distribution(root, name="zzdup", module="dup_mod")
    monkeypatch.syspath_prepend(str(root))
    plugins.reset()
    reg = plugins.get_registry()
    assert reg.get("fake-boxer").plugin == "fakeblocks"
    assert "already did" in caplog.text
    plugins.reset()
    monkeypatch.setenv("LABELBLOCKS_RAISE_PLUGIN_ERRORS", "1")
    with pytest.raises(PluginError, match="block names must be unique"):
        plugins.get_registry()


@pytest.mark.parametrize("args", [["--help"], ["blocks", "list"], ["blocks", "info", "near-duplicates"]])
def test_help_and_listing_do_not_import_torch(args: list[str]) -> None:
    code = ("import sys\nfrom labelblocks.cli import main\n"
            f"try:\n    main({args!r}, standalone_mode=False)\nexcept SystemExit:\n    pass\n"
            "heavy = [m for m in ('torch', 'transformers') if m in sys.modules]\n"
            "assert not heavy, heavy\nprint('CLEAN')\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "CLEAN" in r.stdout


def test_secrets_set_list_rm_and_file_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    r = _cli("secrets", "set", "FAKE_TOKEN", input="s3cr3t-value\n")
    assert r.exit_code == 0, r.output
    assert "s3cr3t-value" not in r.output
    assert stat.S_IMODE(secrets_path().stat().st_mode) == 0o600
    r = _cli("secrets", "set", "OTHER", "--stdin", input="another-one")
    assert r.exit_code == 0
    r = _cli("secrets", "list", "--json")
    assert json.loads(r.stdout) == [{"name": "FAKE_TOKEN", "source": "stored"}, {"name": "OTHER", "source": "stored"}]
    assert "s3cr3t" not in r.output
    monkeypatch.setenv("OTHER", "from-env")
    assert "overridden by environment" in _cli("secrets", "list").output
    from labelblocks.secrets import get_secret

    assert get_secret("OTHER") == "from-env"
    assert _cli("secrets", "rm", "OTHER").exit_code == 0
    r = _cli("secrets", "rm", "OTHER")
    assert r.exit_code == 1 and "no stored secret" in r.output
    r = _cli("secrets", "set", "bad name", "--stdin", input="x")
    assert r.exit_code == 1 and "expected letters" in r.output


@pytest.mark.parametrize(("text", "expected"), [
    ("key sk-live-0123456789abcdefXYZ here", "key *** here"),
    ("c2stbGl2ZS0wMTIzNDU2Nzg5YWJjZGVmWFla", "***"),  # base64
    ("c2stbGl2ZS0wMTIzNDU2Nzg5YWJjZGVmWFla".rstrip("="), "***"),
    ("L-sk-live-0123!", "L-***!"),  # a run of 10+ of its characters
    ("0123456789abc", "***"),
    ("sk-live-0", "sk-live-0"),  # fewer than 10: not taken for the secret
    ("nothing to hide", "nothing to hide"),
])
def test_redact_finds_a_secret_whole_encoded_or_in_pieces(text: str, expected: str) -> None:
    from labelblocks.secrets import redact

    assert redact(text, ["sk-live-0123456789abcdefXYZ"]) == expected
    assert redact(text, []) == text


def test_a_secret_piped_in_is_read_without_a_warning() -> None:
    """`echo KEY | labelblocks secrets set NAME`: no hidden prompt (and no GetPassWarning)
    without a terminal; the value is stored and never printed."""
    r = subprocess.run([sys.executable, "-m", "labelblocks", "secrets", "set", "PIPED_TOKEN"], input="piped-v4lue\n",
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "Warning" not in r.stderr and "piped-v4lue" not in r.stdout + r.stderr
    from labelblocks.secrets import get_secret

    assert get_secret("PIPED_TOKEN") == "piped-v4lue"
