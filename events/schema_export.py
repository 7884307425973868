"""JSON Schemas generated from the event models, committed so partners need no Python.

    python -m events.schema_export    # rewrite the files after changing a model

A test fails when the committed files and the models drift apart.
"""

from __future__ import annotations

import json
from pathlib import Path

from events.ai_act import AiActPack
from events.envelope import CloudEvent
from events.messages import EVENT_TYPES
from events.recipe import Recipe

SCHEMA_DIR = Path(__file__).parent / "schemas"


def generated() -> dict[str, str]:
    """File name -> schema text for the envelope, the recipe, the AI-Act pack and every
    event's data."""
    models = {"cloudevent": CloudEvent, "recipe": Recipe, "ai_act_pack": AiActPack}
    models |= {name.removeprefix("eu.aifactory.tuning."): m for name, m in EVENT_TYPES.items()}
    return {
        f"{name}.schema.json": json.dumps(model.model_json_schema(), indent=2, sort_keys=True)
        + "\n"
        for name, model in models.items()
    }


def write(directory: Path = SCHEMA_DIR) -> None:
    for name, text in generated().items():
        (directory / name).write_text(text)


if __name__ == "__main__":
    write()
