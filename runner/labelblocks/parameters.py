"""parameters.json: validate it, resolve a user's values against it, render argv and
environment for a block, and parse that argv back on the block's side.

The protocol stores every user value as a string; resolving turns them into typed values
(int, float, bool, str) and hides parameters whose ``showIf`` is false.
"""

from __future__ import annotations

import argparse
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from .errors import InvalidInput
from .model import format_validation_error, parse_json

ParamType = Literal["string", "int", "float", "select", "boolean", "flag", "secret", "bucket", "dataset", "project"]
PARAM_TYPES: tuple[str, ...] = ParamType.__args__  # type: ignore[attr-defined]
VALUE_TYPES = ("string", "int", "float", "select", "bucket", "dataset", "project")


class SelectOption(BaseModel):
    model_config = ConfigDict(extra="forbid")
    label: str
    value: str


class ShowIf(BaseModel):
    model_config = ConfigDict(extra="forbid")
    parameter: str
    operator: Literal["eq", "neq"] = "eq"
    value: str | bool | int | float


class ParameterItem(BaseModel):
    """One item of a parameters.json ``parameters`` list."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    name: str
    type: ParamType
    param: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")
    value: str | int | float | bool | None = None
    help: str | None = None
    hint: str | None = None
    placeholder: str | None = None
    valid: list[str | SelectOption] | None = None
    optional: bool = False
    readonly: bool = False
    show_if: ShowIf | None = Field(default=None, alias="showIf")
    multiline: bool = False
    allow_empty: bool = Field(default=False, alias="allowEmpty")
    section: str | None = None

    @model_validator(mode="after")
    def _check(self) -> ParameterItem:
        if self.type == "select" and not self.valid:
            raise ValueError(f"select parameter {self.param!r} needs a non-empty 'valid' list")
        return self

    def valid_values(self) -> list[str]:
        return [v if isinstance(v, str) else v.value for v in (self.valid or [])]


class BlockInfoModel(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)

    name: str = Field(min_length=1)
    description: str = ""
    operates_on: list[str] = Field(default_factory=list, alias="operatesOn")
    required_env_variables: list[str] = Field(default_factory=list, alias="requiredEnvVariables")


class ParametersFile(BaseModel):
    """A whole parameters.json."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)

    version: Literal[1]
    type: str = "ai-action"
    info: BlockInfoModel
    parameters: list[ParameterItem] = Field(default_factory=list)

    @model_validator(mode="after")
    def _unique(self) -> ParametersFile:
        seen: set[str] = set()
        for p in self.parameters:
            if p.param in seen:
                raise ValueError(f"parameter {p.param!r} is declared twice")
            seen.add(p.param)
        names = {p.param for p in self.parameters}
        for p in self.parameters:
            if p.show_if and p.show_if.parameter not in names:
                raise ValueError(f"parameter {p.param!r}: showIf refers to unknown parameter {p.show_if.parameter!r}")
        return self

    def item(self, param: str) -> ParameterItem:
        for p in self.parameters:
            if p.param == param:
                return p
        raise KeyError(param)

    @property
    def secret_names(self) -> list[str]:
        """Every secret the block declares: secret items and requiredEnvVariables."""
        names = [p.param for p in self.parameters if p.type == "secret"]
        names += [n for n in self.info.required_env_variables if n not in names]
        return names

    @property
    def optional_secrets(self) -> set[str]:
        """Secret items marked ``optional``: passed to the block when set, not required."""
        return {p.param for p in self.parameters if p.type == "secret" and p.optional}


def _read_json(path: Path, label: str) -> Any:
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise InvalidInput(f"cannot read {label}: {e.strerror or e}") from None
    return parse_json(raw, label)


def load_parameters(source: str | Path | Mapping[str, Any], what: str | None = None) -> ParametersFile:
    """Load and validate a parameters.json (a path or the parsed document)."""
    label = what or (str(source) if isinstance(source, (str, Path)) else "parameters.json")
    doc = _read_json(Path(source), label) if isinstance(source, (str, Path)) else source
    try:
        return ParametersFile.model_validate(doc)
    except ValidationError as e:
        raise InvalidInput(format_validation_error(e, label)) from None


def json_schema() -> dict[str, Any]:
    """The JSON Schema of parameters.json (committed as parameters/parameters.schema.json)."""
    schema = ParametersFile.model_json_schema(by_alias=True)
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "labelblocks block parameters.json"
    return schema


# --- resolving user values -----------------------------------------------------------------

_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off", ""}


def _as_bool(v: Any, param: str) -> bool:
    if isinstance(v, bool):
        return v
    s = str(v).strip().lower()
    if s in _TRUE:
        return True
    if s in _FALSE:
        return False
    raise InvalidInput(f"parameter {param!r}: expected true/false (or 1/0), got {v!r}")


def _show_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    return "" if v is None else str(v)


def _convert(item: ParameterItem, raw: Any) -> Any:
    p = item.param
    if item.type in ("boolean", "flag"):
        return _as_bool(raw, p)
    if raw is None:
        return None
    if item.type == "int":
        if isinstance(raw, bool):
            raise InvalidInput(f"parameter {p!r}: expected an integer, got {raw!r}")
        try:
            f = float(str(raw).strip())
        except ValueError:
            raise InvalidInput(f"parameter {p!r}: expected an integer, got {raw!r}") from None
        if not f.is_integer():
            raise InvalidInput(f"parameter {p!r}: expected an integer, got {raw!r}")
        return int(f)
    if item.type == "float":
        try:
            return float(str(raw).strip())
        except ValueError:
            raise InvalidInput(f"parameter {p!r}: expected a number, got {raw!r}") from None
    s = _show_value(raw)
    if item.multiline and isinstance(raw, str):
        s = decode_protocol_lines(s)
    if item.type == "select" and s not in item.valid_values():
        raise InvalidInput(f"parameter {p!r}: expected one of {', '.join(item.valid_values())}, got {s!r}")
    return s


@dataclass
class ResolvedParameters:
    """A block's parameters resolved for one step: typed values of the visible items."""

    spec: ParametersFile
    values: dict[str, Any] = field(default_factory=dict)
    hidden: list[str] = field(default_factory=list)

    def for_record(self) -> dict[str, Any]:
        """What may be stored in jobs and shown: every visible non-secret value."""
        return {k: v for k, v in self.values.items() if self.spec.item(k).type != "secret"}


def resolve(spec: ParametersFile, user: Mapping[str, Any], block: str = "block") -> ResolvedParameters:
    """Resolve ``user`` values (strings, as the protocol stores them) against the defaults.

    Unknown parameters, wrong types, values outside a select's list, missing required values
    and attempts to change a readonly parameter are errors naming the parameter, the value and
    what was expected. Secret items are not resolved here (see :mod:`labelblocks.secrets`).
    """
    known = {p.param for p in spec.parameters}
    for k in user:
        if k not in known:
            shown = ", ".join(sorted(p.param for p in spec.parameters if p.type != "secret")) or "none"
            raise InvalidInput(f"{block}: unknown parameter {k!r} (its parameters: {shown})")
    values: dict[str, Any] = {}
    for item in spec.parameters:
        if item.type == "secret":
            if item.param in user:
                raise InvalidInput(
                    f"{block}: {item.param!r} is a secret: set it with `labelblocks secrets set {item.param}` "
                    "or the environment variable, never as a parameter"
                )
            continue
        if item.param in user:
            raw = user[item.param]
            if item.readonly and _show_value(raw) != _show_value(item.value):
                raise InvalidInput(f"{block}: parameter {item.param!r} is read-only (fixed at {item.value!r})")
        else:
            raw = item.value
        values[item.param] = _convert(item, raw)
    # showIf: hide items whose condition is false (conditions see the visible values)
    hidden: list[str] = []
    changed = True
    while changed:
        changed = False
        for item in spec.parameters:
            if item.param in hidden or item.show_if is None:
                continue
            ref = item.show_if.parameter
            cur = _show_value(values.get(ref)) if ref not in hidden else None
            want = _show_value(item.show_if.value).lower()
            visible = (cur is not None and cur.lower() == want) if item.show_if.operator == "eq" else (
                cur is None or cur.lower() != want)
            if not visible:
                hidden.append(item.param)
                changed = True
    for h in hidden:
        values.pop(h, None)
    for item in spec.parameters:
        if item.type == "secret" or item.param in hidden:
            continue
        v = values.get(item.param)
        if item.type in ("boolean", "flag"):
            continue
        empty = v is None or (isinstance(v, str) and v == "")
        if empty and not item.optional and not item.allow_empty:
            raise InvalidInput(f"{block}: parameter {item.param!r} ({item.name}) is required: give -p {item.param}=VALUE")
        if v is None:
            values.pop(item.param, None)
    return ResolvedParameters(spec=spec, values=values, hidden=hidden)


# --- rendering to argv / environment -------------------------------------------------------


_LINE_ESCAPES = re.compile(r"\\\\n|\\n")


def decode_protocol_lines(s: str) -> str:
    """A multiline value as the protocol's blocks decode one: the two characters ``\\n`` are a
    newline, and ``\\\\n`` a literal backslash and n (real newlines stay as they are)."""
    if "\\" not in s:
        return s
    return _LINE_ESCAPES.sub(lambda m: "\n" if m.group(0) == "\\n" else "\\n", s)


def encode_multiline(s: str) -> str:
    return s.replace("\r\n", "\n").replace("\n", "\\n")


def decode_multiline(s: str) -> str:
    return s.replace("\\n", "\n")


def render_argv(
    resolved: ResolvedParameters,
    data_ids_file: str | Path | None = None,
    propose_actions: int | None = None,
) -> list[str]:
    """The protocol's argv for a block: values as ``--param value``, booleans as 1/0, flags
    bare when true, secrets never (they go to the environment), multiline newlines as ``\\n``."""
    argv: list[str] = []
    for item in resolved.spec.parameters:
        if item.param not in resolved.values or item.type == "secret":
            continue
        v = resolved.values[item.param]
        if item.type == "flag":
            if v:
                argv.append(f"--{item.param}")
        elif item.type == "boolean":
            argv += [f"--{item.param}", "1" if v else "0"]
        else:
            s = _show_value(v)
            if item.multiline or "\n" in s:
                s = encode_multiline(s)
            argv += [f"--{item.param}", s]
    if data_ids_file is not None:
        argv += ["--data-ids-file", str(data_ids_file)]
    if propose_actions is not None:
        argv += ["--propose-actions", str(int(propose_actions))]
    return argv


def render_env(spec: ParametersFile, secrets: Mapping[str, str]) -> dict[str, str]:
    """Environment variables for the block's declared secrets (only those)."""
    return {name: secrets[name] for name in spec.secret_names if name in secrets}


# --- parsing argv back on the block side ---------------------------------------------------


@dataclass
class BlockArgs:
    values: dict[str, Any]
    data_ids: list[int] | None
    propose_actions: int | None
    unknown: list[str]


def read_ids_file(path: str | Path) -> list[int]:
    """Read a data-ids file: a bare JSON array or ``{"ids": [...]}``."""
    doc = _read_json(Path(path), f"data ids file {path}")
    if isinstance(doc, dict):
        doc = doc.get("ids")
    if not isinstance(doc, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in doc):
        raise InvalidInput(f"data ids file {path}: expected a JSON array of integer ids or {{\"ids\": [...]}}")
    return list(doc)


def write_ids_file(path: str | Path, ids: Sequence[int]) -> None:
    Path(path).write_text(json.dumps(list(ids)), encoding="utf-8")


def parse_block_argv(spec: ParametersFile, argv: Sequence[str]) -> BlockArgs:
    """Parse a protocol argv on the block side: known parameters typed, defaults filled,
    multiline decoded, unknown arguments ignored (and returned)."""
    ap = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    for item in spec.parameters:
        if item.type == "secret":
            continue
        if item.type == "flag":
            ap.add_argument(f"--{item.param}", dest=item.param, action="store_true", default=None)
        else:
            ap.add_argument(f"--{item.param}", dest=item.param, default=None)
    ap.add_argument("--data-ids-file", dest="__ids", default=None)
    ap.add_argument("--propose-actions", dest="__propose", default=None)
    ns, unknown = ap.parse_known_args(list(argv))
    user: dict[str, Any] = {}
    for item in spec.parameters:
        if item.type == "secret":
            continue
        v = getattr(ns, item.param)
        if v is None:
            continue
        if isinstance(v, str) and (item.multiline or "\\n" in v):
            v = decode_multiline(v)
        user[item.param] = v
    if spec.parameters and any(i.type == "flag" for i in spec.parameters):
        for item in spec.parameters:
            if item.type == "flag" and item.param not in user:
                user[item.param] = False
    values = resolve(spec, {k: v for k, v in user.items() if not spec.item(k).readonly}).values
    ids = read_ids_file(ns.__ids) if ns.__ids else None
    propose = None
    if ns.__propose is not None:
        try:
            propose = int(ns.__propose)
        except ValueError:
            raise InvalidInput(f"--propose-actions: expected an integer job id, got {ns.__propose!r}") from None
    return BlockArgs(values=values, data_ids=ids, propose_actions=propose, unknown=unknown)
