"""Actions: named chains of block steps over a selection of samples, saved in the project."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic.alias_generators import to_camel

from .errors import InvalidInput, NotFound
from .filters import MetadataCondition, SampleFilter
from .model import format_validation_error
from .parameters import ResolvedParameters, resolve
from .plugins import BlockRegistry
from .store import Store
from .store import actions as action_store

DataCategory = Literal["allData", "unlabeledData", "enabledData", "dataWithoutMetadataKey", "dataWithMetadata"]
DATA_CATEGORIES: tuple[str, ...] = DataCategory.__args__  # type: ignore[attr-defined]


class _M(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")


class Step(_M):
    block: str = Field(min_length=1)
    parameters: dict[str, str] = Field(default_factory=dict)


class MetadataItem(_M):
    key: str = Field(min_length=1)
    value: str


class Action(_M):
    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    steps: list[Step] = Field(min_length=1)
    data_category: DataCategory = "allData"
    data_metadata_key: str | None = None
    data_metadata_value: str | None = None
    filter: SampleFilter | None = None
    set_metadata: list[MetadataItem] = Field(default_factory=list)
    cache_unchanged_steps: bool = True

    def selection(self) -> SampleFilter:
        """The samples this action touches: its data category combined with its filter."""
        f = (self.filter or SampleFilter()).replace()
        if self.data_category == "unlabeledData":
            f.unlabeled = True
        elif self.data_category == "enabledData":
            f.include_disabled = False
        elif self.data_category in ("dataWithoutMetadataKey", "dataWithMetadata"):
            key = self.data_metadata_key
            if not key:
                raise InvalidInput(f"action {self.name}: data category {self.data_category} needs a metadata key")
            if self.data_category == "dataWithoutMetadataKey":
                cond = MetadataCondition(key=key, op="neq", values=[])
            else:
                cond = MetadataCondition(key=key, op="eq",
                                         values=[self.data_metadata_value] if self.data_metadata_value is not None else [])
            if f.metadata and f.combinator == "or":
                raise InvalidInput(f"action {self.name}: a metadata data category cannot combine with an --any filter")
            f.metadata = [*f.metadata, cond]
        return f

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(by_alias=True, mode="json", exclude_none=True)


def parse_action(data: Any, what: str = "action") -> Action:
    try:
        return Action.model_validate(data)
    except ValidationError as e:
        raise InvalidInput(format_validation_error(e, what)) from None


def load_action_file(path: Path) -> Action:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise InvalidInput(f"cannot read {path}: {e.strerror or e}") from None
    try:
        if path.suffix.lower() in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
    except Exception as e:
        raise InvalidInput(f"{path} is not valid {'YAML' if path.suffix.lower() in ('.yaml', '.yml') else 'JSON'}: {e}") from None
    return parse_action(data, what=f"action file {path}")


def validate_steps(action: Action, registry: BlockRegistry) -> list[ResolvedParameters]:
    """Check every step's block exists and its parameters resolve (save time, not run time)."""
    out = []
    for i, step in enumerate(action.steps, 1):
        reg = registry.get(step.block)
        try:
            resolved = resolve(reg.cls.spec(), step.parameters, block=step.block)
            reg.cls.check_args(resolved.values)
        except (InvalidInput, ValueError) as e:
            raise InvalidInput(f"step {i} ({step.block}): {e}") from None
        out.append(resolved)
    return out


def save_action(store: Store, action: Action, replace: bool = False) -> None:
    action_store.save_definition(store, action.name, json.dumps(action.to_json()), replace)


def get_action(store: Store, name: str) -> Action:
    text = action_store.get_definition(store, name)
    if text is None:
        raise NotFound(f"no action named {name!r}: see `labelblocks actions list`")
    return parse_action(json.loads(text))


def list_actions(store: Store) -> list[Action]:
    return [parse_action(json.loads(t)) for t in action_store.list_definitions(store)]


def delete_action(store: Store, name: str) -> None:
    if not action_store.delete_definition(store, name):
        raise NotFound(f"no action named {name!r}")
