from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from labelblocks.errors import InvalidInput
from labelblocks.parameters import (
    decode_multiline,
    load_parameters,
    parse_block_argv,
    read_ids_file,
    render_argv,
    render_env,
    resolve,
)
from labelblocks.plugins import get_registry
from parameters.generate import schemas
from tests.conftest import REPO

SPEC: dict[str, Any] = {
    "version": 1,
    "type": "ai-action",
    "info": {"name": "All types", "description": "d", "operatesOn": ["images_object_detection"],
             "requiredEnvVariables": ["EXTRA_ENDPOINT"]},
    "parameters": [
        {"name": "Prompt", "type": "string", "param": "prompt", "value": "a\nb", "multiline": True},
        {"name": "Count", "type": "int", "param": "count", "value": 3},
        {"name": "Threshold", "type": "float", "param": "threshold", "value": 0.5},
        {"name": "Mode", "type": "select", "param": "mode", "value": "fast",
         "valid": ["fast", {"label": "Slow and careful", "value": "slow"}]},
        {"name": "Enabled", "type": "boolean", "param": "enabled", "value": True},
        {"name": "NMS", "type": "flag", "param": "nms", "value": False},
        {"name": "IoU", "type": "float", "param": "nms-iou-threshold", "value": 0.4,
         "showIf": {"parameter": "nms", "operator": "eq", "value": "true"}},
        {"name": "Key", "type": "secret", "param": "API_KEY"},
        {"name": "Bucket", "type": "bucket", "param": "bucket_name", "value": "b1"},
        {"name": "Dataset", "type": "dataset", "param": "dataset", "value": "ds", "optional": True},
        {"name": "Project", "type": "project", "param": "source-project", "optional": True},
        {"name": "Fixed", "type": "string", "param": "fixed", "value": "v1", "readonly": True},
        {"name": "Note", "type": "string", "param": "note", "value": "", "allowEmpty": True,
         "hint": "h", "placeholder": "p", "section": "advanced", "help": "free text"},
    ],
}


def test_render_argv_every_type() -> None:
    spec = load_parameters(SPEC)
    r = resolve(spec, {"nms": "true", "count": "7", "mode": "slow", "enabled": "false"})
    argv = render_argv(r, data_ids_file="/tmp/ids.json", propose_actions=12)
    assert argv == [
        "--prompt", "a\\nb",
        "--count", "7",
        "--threshold", "0.5",
        "--mode", "slow",
        "--enabled", "0",
        "--nms",
        "--nms-iou-threshold", "0.4",
        "--bucket_name", "b1",
        "--dataset", "ds",
        "--fixed", "v1",
        "--note", "",
        "--data-ids-file", "/tmp/ids.json",
        "--propose-actions", "12",
    ]
    assert "API_KEY" not in " ".join(argv)
    # a flag that is off is absent, and hides what depends on it
    argv2 = render_argv(resolve(spec, {}))
    assert "--nms" not in argv2 and "--nms-iou-threshold" not in argv2
    assert argv2[argv2.index("--enabled") + 1] == "1"


def test_secrets_only_in_environment() -> None:
    spec = load_parameters(SPEC)
    env = render_env(spec, {"API_KEY": "k1", "EXTRA_ENDPOINT": "http://x", "OTHER": "nope"})
    assert env == {"API_KEY": "k1", "EXTRA_ENDPOINT": "http://x"}
    with pytest.raises(InvalidInput, match="is a secret"):
        resolve(spec, {"API_KEY": "k1"})


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"count": "three"}, "'count': expected an integer, got 'three'"),
        ({"count": "2.5"}, "expected an integer"),
        ({"threshold": "high"}, "'threshold': expected a number"),
        ({"mode": "medium"}, "expected one of fast, slow, got 'medium'"),
        ({"enabled": "maybe"}, "expected true/false"),
        ({"unknown": "1"}, "unknown parameter 'unknown'"),
        ({"fixed": "v2"}, "read-only"),
        ({"prompt": ""}, "'prompt' (Prompt) is required"),
    ],
)
def test_resolve_errors_name_parameter_and_value(values: dict[str, str], message: str) -> None:
    with pytest.raises(InvalidInput, match=message.replace("(", r"\(").replace(")", r"\)")):
        resolve(load_parameters(SPEC), values, block="all-types")


def test_resolve_types_and_show_if() -> None:
    r = resolve(load_parameters(SPEC), {"count": "4", "threshold": "1e-2", "nms": "1", "note": ""})
    assert r.values["count"] == 4 and r.values["threshold"] == 0.01 and r.values["nms"] is True
    assert r.values["nms-iou-threshold"] == 0.4 and r.values["note"] == ""
    assert "source-project" not in r.values  # optional, no value
    r2 = resolve(load_parameters(SPEC), {})
    assert "nms-iou-threshold" in r2.hidden and "nms-iou-threshold" not in r2.values


def test_parse_argv_back_on_block_side(tmp_path: Path) -> None:
    spec = load_parameters(SPEC)
    ids = tmp_path / "ids.json"
    ids.write_text("[4, 5, 6]")
    argv = render_argv(resolve(spec, {"nms": "true", "prompt": "x\ny", "mode": "slow"}), ids, 9)
    parsed = parse_block_argv(spec, [*argv, "--unknown-arg", "v", "--other-flag"])
    assert parsed.values["prompt"] == "x\ny"
    assert parsed.values["nms"] is True and parsed.values["mode"] == "slow" and parsed.values["count"] == 3
    assert parsed.data_ids == [4, 5, 6] and parsed.propose_actions == 9
    assert "--unknown-arg" in parsed.unknown
    parsed2 = parse_block_argv(spec, [])
    assert parsed2.values["nms"] is False and parsed2.data_ids is None and parsed2.propose_actions is None


@pytest.mark.parametrize(("content", "ids"), [("[1, 2, 3]", [1, 2, 3]), ('{"ids": [7]}', [7]), ("[]", [])])
def test_ids_file_both_shapes(tmp_path: Path, content: str, ids: list[int]) -> None:
    (tmp_path / "i.json").write_text(content)
    assert read_ids_file(tmp_path / "i.json") == ids


@pytest.mark.parametrize("content", ['{"ids": "x"}', "[1, \"2\"]", "nope", "[true]"])
def test_ids_file_bad(tmp_path: Path, content: str) -> None:
    (tmp_path / "i.json").write_text(content)
    with pytest.raises(InvalidInput, match="data ids file"):
        read_ids_file(tmp_path / "i.json")


def test_multiline_roundtrip() -> None:
    assert decode_multiline("a\\nb\\nc") == "a\nb\nc"


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d.update(version=2), "version"),
        (lambda d: d["parameters"].append({"name": "x", "type": "colour", "param": "x"}), "type"),
        (lambda d: d["parameters"].append({"name": "x", "type": "select", "param": "x2"}), "valid"),
        (lambda d: d["parameters"].append(dict(d["parameters"][0])), "declared twice"),
        (lambda d: d["parameters"][6]["showIf"].update(parameter="ghost"), "unknown parameter 'ghost'"),
        (lambda d: d["parameters"].append({"name": "x", "type": "string", "param": "bad param"}), "param"),
    ],
)
def test_invalid_parameters_json(mutate: Any, message: str) -> None:
    doc = json.loads(json.dumps(SPEC))
    mutate(doc)
    with pytest.raises(InvalidInput, match=message):
        load_parameters(doc)


def test_committed_schemas_are_current() -> None:
    for name, schema in schemas().items():
        committed = json.loads((REPO / "parameters" / name).read_text())
        assert committed == json.loads(json.dumps(schema)), f"run `python parameters/generate.py` ({name} is stale)"


def test_every_parameters_json_matches_the_schema() -> None:
    schema = json.loads((REPO / "parameters" / "parameters.schema.json").read_text())
    docs = [json.loads(p.read_text()) for p in REPO.rglob("parameters.json") if ".git" not in p.parts]
    docs += [dict(b.cls.parameters) if isinstance(b.cls.parameters, dict) else json.loads(Path(b.cls.parameters).read_text())
             for b in get_registry().blocks.values()]
    docs.append(SPEC)
    assert len(docs) >= 6
    for d in docs:
        jsonschema.validate(d, schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"version": 1, "info": {"name": "x"}, "parameters": [{"name": "a", "type": "colour",
                                                                                 "param": "a"}]}, schema)


def test_action_presets_match_the_schema() -> None:
    schema = json.loads((REPO / "parameters" / "action.schema.json").read_text())
    presets = list((REPO / "parameters" / "presets").glob("*.yaml"))
    assert presets
    for p in presets:
        jsonschema.validate(yaml.safe_load(p.read_text()), schema)


def test_a_blocks_typed_options_come_from_its_parameters_json_alone() -> None:
    """Block.options resolves against parameters.json: its defaults and types are the only ones."""
    from labelblocks.errors import InvalidInput
    from tests.fake_blocks import FakeLabeler

    opts = FakeLabeler.options(delay="1.5")
    assert opts["prefix"] == "L-" and opts["delay"] == 1.5 and opts["batch-size"] == 4
    assert "FAKE_TOKEN" not in opts  # a secret is never an option
    with pytest.raises(InvalidInput, match="unknown parameter 'nope'"):
        FakeLabeler.options({"nope": "1"})
    with pytest.raises(InvalidInput, match="expected a number"):
        FakeLabeler.options(delay="soon")
