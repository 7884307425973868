"""A tiny random Llama with the real SmolLM2 tokenizer: real code paths in seconds, offline."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

# huggingface_hub reads this when first imported, so it is set before any test imports it.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest

from events.recipe import Recipe


@pytest.fixture
def write_jsonl() -> Callable[[Path, list[Any]], Path]:
    """Rows as JSON lines; a str row is written verbatim, to make broken lines."""

    def write(path: Path, rows: list[Any]) -> Path:
        path.write_text("".join(r if isinstance(r, str) else json.dumps(r) + "\n" for r in rows))
        return path

    return write


@pytest.fixture
def make_recipe(tmp_path: Path, tiny_model_dir: Path) -> Callable[..., Recipe]:
    """Recipe over the tiny model; data and train fields override the small defaults."""

    def make(train_file: Path, data: dict | None = None, train: dict | None = None) -> Recipe:
        return Recipe.model_validate(
            {
                "name": "tiny-routing",
                "sector": "energy",
                "description": "test",
                "model": {"base": str(tiny_model_dir)},
                "data": {
                    "train_file": str(train_file),
                    "prompt_template": "Ticket: {{ text }}\nTeam:",
                    "completion_template": " {{ label }}",
                    **(data or {}),
                },
                "lora": {"r": 4, "alpha": 8},
                "train": {
                    "max_steps": 4,
                    "batch_size": 4,
                    "max_seq_len": 32,
                    "logging_steps": 2,
                    **(train or {}),
                },
                "eval": {"tasks": [{"name": "t"}]},
                "gate": {"task": "t"},
            }
        )

    return make


@pytest.fixture(autouse=True)
def fresh_accelerator_state() -> Iterator[None]:
    """accelerate keeps one state per process, fixed by its first Accelerator (a training
    stage builds one); tests that train in-process with different train.precision values
    each start from none."""
    yield
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
