"""The sample filter: the protocol's metadata JSON filter list plus the ordinary sample filters.

Metadata conditions, in the protocol's JSON form::

    [{"key": "site", "op": "eq", "values": ["Paris", "Lyon"]},   # site is Paris or Lyon
     {"key": "device", "op": "neq", "values": ["cam2"]},         # device is not cam2 (or absent)
     {"key": "reviewed", "op": "eq", "values": []},              # has the key, any value
     {"key": "reason", "op": "neq", "values": []},               # lacks the key
     {"no_metadata": true},                                      # has no metadata at all
     {"filters_combinator": "or"}]                               # any instead of all

CLI shorthand: ``--where K=V`` (repeatable; several values of one key mean any of them),
``--where-not K=V``, ``--has K``, ``--missing K``, ``--no-metadata``, ``--any``.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from .errors import InvalidInput
from .text import CATEGORIES, parse_json

# The filter is a plain dataclass, not a pydantic model: commands that only read (`samples
# list`) build one without importing pydantic. Models that hold one (an action's filter)
# still validate it, as pydantic validates dataclass fields; input from outside goes through
# SampleFilter.from_json.


@dataclass
class MetadataCondition:
    key: str
    op: Literal["eq", "neq"] = "eq"
    values: list[str] = field(default_factory=list)

    __pydantic_config__: ClassVar[dict[str, Any]] = {"extra": "ignore", "alias_generator": None}

    def to_json(self) -> dict[str, Any]:
        """The condition as JSON, without the parts left at their defaults."""
        out: dict[str, Any] = {"key": self.key}
        if self.op != "eq":
            out["op"] = self.op
        if self.values:
            out["values"] = list(self.values)
        return out


@dataclass
class SampleFilter:
    """Which samples a command touches. Every part is ANDed, except the metadata conditions,
    which are combined with ``combinator``."""

    # inside a pydantic model (an action), the fields keep their names and unknown keys are
    # ignored, whatever the model's own settings
    __pydantic_config__: ClassVar[dict[str, Any]] = {"extra": "ignore", "alias_generator": None}

    metadata: list[MetadataCondition] = field(default_factory=list)
    no_metadata: bool = False
    combinator: Literal["and", "or"] = "and"
    labels: list[str] = field(default_factory=list)
    unlabeled: bool = False
    categories: list[str] = field(default_factory=list)
    include_disabled: bool = True
    disabled_only: bool = False
    search: str | None = None
    ids: list[int] | None = None
    min_id: int | None = None
    max_id: int | None = None
    data_type: Literal["audio", "image"] | None = None

    @classmethod
    def from_json(cls, data: Any, what: str = "filter") -> SampleFilter:
        """A filter from its JSON form (:meth:`to_json`), validated: InvalidInput says what is wrong."""
        from pydantic import TypeAdapter, ValidationError

        from .model import format_validation_error

        try:
            return TypeAdapter(SampleFilter).validate_python(data)
        except ValidationError as e:
            raise InvalidInput(format_validation_error(e, what)) from None

    def to_json(self) -> dict[str, Any]:
        """The filter as JSON, without the parts left at their defaults."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
            if value != default:
                out[f.name] = [c.to_json() for c in value] if f.name == "metadata" else copy.deepcopy(value)
        return out

    def replace(self, **changes: Any) -> SampleFilter:
        """A copy with ``changes``; the rest is copied, so changing the copy leaves this one as it is."""
        return dataclasses.replace(copy.deepcopy(self), **changes)

    def has_metadata_conditions(self) -> bool:
        return bool(self.metadata) or self.no_metadata

    def metadata_json(self) -> list[dict[str, Any]]:
        """The metadata part in the protocol's JSON filter-list form."""
        out: list[dict[str, Any]] = [dataclasses.asdict(c) for c in self.metadata]
        if self.no_metadata:
            out.append({"no_metadata": True})
        if self.combinator != "and":
            out.append({"filters_combinator": self.combinator})
        return out


def parse_metadata_json(data: Any) -> tuple[list[MetadataCondition], bool, Literal["and", "or"]]:
    """Parse the protocol's JSON filter list (a list, or a JSON string of one)."""
    if isinstance(data, str):
        data = parse_json(data, "metadata filter", "a JSON list")
    if not isinstance(data, list):
        raise InvalidInput(f"metadata filter: expected a JSON list, got {type(data).__name__}")
    conds: list[MetadataCondition] = []
    no_md = False
    comb: Literal["and", "or"] = "and"
    for i, item in enumerate(data):
        if not isinstance(item, dict):
            raise InvalidInput(f"metadata filter item {i}: expected an object, got {item!r}")
        if "no_metadata" in item:
            no_md = bool(item["no_metadata"])
            continue
        if "filters_combinator" in item:
            c = item["filters_combinator"]
            if c not in ("and", "or"):
                raise InvalidInput(f"metadata filter item {i}: filters_combinator must be 'and' or 'or', got {c!r}")
            comb = c
            continue
        key = item.get("key")
        if not isinstance(key, str) or not key:
            raise InvalidInput(f"metadata filter item {i}: expected a non-empty string 'key', got {key!r}")
        op = item.get("op", "eq")
        if op not in ("eq", "neq"):
            raise InvalidInput(f"metadata filter item {i}: op must be 'eq' or 'neq', got {op!r}")
        values = item.get("values", [])
        if values is None:
            values = []
        if not isinstance(values, list) or not all(isinstance(v, (str, int, float)) for v in values):
            raise InvalidInput(f"metadata filter item {i}: expected 'values' to be a list of strings, got {values!r}")
        conds.append(MetadataCondition(key=key, op=op, values=[str(v) for v in values]))
    return conds, no_md, comb


def split_key_value(text: str, what: str = "--where") -> tuple[str, str]:
    if "=" not in text:
        raise InvalidInput(f"{what}: expected KEY=VALUE, got {text!r}")
    key, value = text.split("=", 1)
    key = key.strip()
    if not key:
        raise InvalidInput(f"{what}: expected KEY=VALUE with a non-empty key, got {text!r}")
    return key, value


def from_shorthand(
    where: Iterable[str] = (),
    where_not: Iterable[str] = (),
    has: Iterable[str] = (),
    missing: Iterable[str] = (),
    no_metadata: bool = False,
    any_: bool = False,
) -> tuple[list[MetadataCondition], bool, Literal["and", "or"]]:
    """Build metadata conditions from the CLI shorthand."""
    conds: list[MetadataCondition] = []
    for op, items, flag in (("eq", where, "--where"), ("neq", where_not, "--where-not")):
        grouped: dict[str, list[str]] = {}
        for text in items:
            k, v = split_key_value(text, flag)
            grouped.setdefault(k, []).append(v)
        conds.extend(MetadataCondition(key=k, op=op, values=vs) for k, vs in grouped.items())  # type: ignore[arg-type]
    conds.extend(MetadataCondition(key=k, op="eq", values=[]) for k in has)
    conds.extend(MetadataCondition(key=k, op="neq", values=[]) for k in missing)
    return conds, no_metadata, ("or" if any_ else "and")


def check_categories(categories: Iterable[str]) -> list[str]:
    out = []
    for c in categories:
        if c not in CATEGORIES:
            raise InvalidInput(f"unknown category {c!r}: expected one of {', '.join(CATEGORIES)}")
        out.append(c)
    return out
