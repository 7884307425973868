"""JSON Schemas generated from the event models, committed so partners need no Python.

    python -m events.schema_export    # rewrite the files after changing a model

A test fails when the committed files and the models drift apart. The AI-Act pack, a file
published beside each adapter rather than an event, has its own in `stagefiles.schema_export`.
"""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import BaseModel

from events.envelope import CloudEvent
from events.messages import EVENT_TYPES
from events.recipe import Recipe

SCHEMA_DIR = Path(__file__).parent / "schemas"


def schemas(models: dict[str, type[BaseModel]]) -> dict[str, str]:
    """File name -> schema text of each model, named `{name}.schema.json`."""
    return {
        f"{name}.schema.json": json.dumps(model.model_json_schema(), indent=2, sort_keys=True)
        + "\n"
        for name, model in models.items()
    }


def generated() -> dict[str, str]:
    """File name -> schema text for the envelope, the recipe and every event's data."""
    models: dict[str, type[BaseModel]] = {"cloudevent": CloudEvent, "recipe": Recipe}
    models |= {name.removeprefix("eu.aifactory.tuning."): m for name, m in EVENT_TYPES.items()}
    return schemas(models)


def write(texts: dict[str, str], directory: Path) -> None:
    for name, text in texts.items():
        (directory / name).write_text(text)


if __name__ == "__main__":
    write(generated(), SCHEMA_DIR)
