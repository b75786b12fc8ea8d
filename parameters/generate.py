"""Regenerate the JSON Schemas in this folder from the validated models:

    python parameters/generate.py
"""

from __future__ import annotations

import json
from pathlib import Path

from labelblocks.actions import Action
from labelblocks.parameters import json_schema

HERE = Path(__file__).resolve().parent


def schemas() -> dict[str, dict]:
    action = Action.model_json_schema(by_alias=True)
    action["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    action["title"] = "labelblocks action file"
    return {"parameters.schema.json": json_schema(), "action.schema.json": action}


if __name__ == "__main__":
    for name, schema in schemas().items():
        (HERE / name).write_text(json.dumps(schema, indent=2, sort_keys=True) + "\n")
        print(f"wrote {HERE / name}")
