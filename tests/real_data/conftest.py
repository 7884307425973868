"""Recipes against the real public data sets in `../shared/eval-data` (optional).

The shipped recipes train and evaluate on generated files that imitate the columns of the hub
data set each recipe names. These checks feed the real rows through the same column mapping,
prompt template and lm-eval task YAML, so a recipe is known to handle the real format too.
The project never needs that folder: where it is absent (a fresh clone, CI) they skip.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from lm_eval.tasks import TaskManager
from transformers import PreTrainedTokenizerBase

from evaluation.tasks import materialise_tasks
from evaluation.templates import compile_once
from events.recipe import Recipe
from events.recipe_eval import EvalTask
from finetune.data import TokenizedData, load_examples

EVAL_DATA = Path(
    os.environ.get("AIF_EVAL_DATA", Path(__file__).resolve().parents[3] / "shared" / "eval-data")
)


def _real_file(relative: str) -> Path:
    """A file of the shared real data sets, or a clean skip where they are not on this disk."""
    path = EVAL_DATA / relative
    if not path.is_file():
        pytest.skip(f"optional real data {path} is absent (set AIF_EVAL_DATA to its folder)")
    return path


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as fh:
        fh.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    return path


@dataclass(frozen=True)
class RenderedDoc:
    text: str
    choices: list[str]
    target: int


def _task_over_rows(
    recipe: Recipe, task_name: str, rows: list[dict[str, Any]], tmp_path: Path
) -> list[RenderedDoc]:
    """Run the recipe's task YAML over `rows` instead of its shipped test file, through the
    evaluation stage's own loader and lm-eval's; every row must render with a valid target."""
    shipped = next(t for t in recipe.eval.tasks if t.name == task_name)
    assert shipped.yaml is not None, f"{task_name} is a built-in task"
    config = yaml.safe_load(Path(shipped.yaml).read_text())
    data = _write_jsonl(tmp_path / "real" / f"{task_name}.jsonl", rows)
    config["dataset_kwargs"]["data_files"] = {config["test_split"]: str(data)}
    swapped = tmp_path / "real" / f"{task_name}.yaml"
    swapped.write_text(yaml.safe_dump(config, allow_unicode=True))
    only = EvalTask(name=task_name, yaml=str(swapped))
    section = recipe.eval.model_copy(update={"tasks": [only]})
    include = materialise_tasks(section, tmp_path / "out").include_dir
    compile_once()  # as the evaluation stage renders them
    task = TaskManager(include_path=str(include)).load_task_or_group([task_name])[task_name]
    rendered = []
    for index, doc in enumerate(task.test_docs()):
        choices, target = task.doc_to_choice(doc), task.doc_to_target(doc)
        assert isinstance(target, int) and 0 <= target < len(choices), (
            f"row {index + 1}: target {target!r} is not an index into {choices}"
        )
        rendered.append(RenderedDoc(task.doc_to_text(doc), list(choices), target))
    assert len(rendered) == len(rows)
    return rendered


def _training_rows(
    recipe: Recipe, rows: list[dict[str, Any]], tmp_path: Path,
    tokenizer: PreTrainedTokenizerBase,
) -> TokenizedData:
    """Validate and tokenise `rows` as the recipe's training data (all of them: none held
    out for validation); any bad row fails."""
    data = _write_jsonl(tmp_path / "real" / "train.jsonl", rows)
    section = recipe.data.model_copy(update={"train_file": str(data), "validation_split": 0.0})
    return load_examples(section, tokenizer, recipe.train.max_seq_len)


# Fixtures hand the helpers to test modules, which cannot import a conftest.
@pytest.fixture
def real_file() -> Callable[[str], Path]:
    return _real_file


@pytest.fixture
def task_over_rows() -> Callable[..., list[RenderedDoc]]:
    return _task_over_rows


@pytest.fixture
def training_rows() -> Callable[..., TokenizedData]:
    return _training_rows
