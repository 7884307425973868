"""Training rows whose label is not one of the gate task's choices are refused by line and
label, through the task's own templates; `data.label_map` renames a data set's labels."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from transformers import PreTrainedTokenizerBase

from events.recipe import Recipe
from finetune.data import DataValidationError, load_examples
from finetune.labels import TaskLabels, task_labels
from finetune.preflight import build_report
from recipes import load_recipe

TENANCY = "tenancy-law-sentence-function-de"
SENTENCE = "Der Mieter hat die Mietsache bei Vertragsende zurückzugeben."


def _on(name: str, path: Path, **data: Any) -> Recipe:
    recipe = load_recipe(name)
    return recipe.model_copy(update={"data": recipe.data.model_copy(
        update={"train_file": str(path), "validation_file": None, "validation_split": 0.0,
                **data})})


def test_an_unknown_label_is_refused_with_its_line_and_the_choices(
    tmp_path: Path, write_jsonl: Callable, tokenizer: PreTrainedTokenizerBase
) -> None:
    rows = [{"Funktion": "Duty", "Text": SENTENCE}, {"Funktion": "Continuation", "Text": SENTENCE},
            {"Funktion": "Permission", "Text": SENTENCE}]
    report = build_report(_on(TENANCY, write_jsonl(tmp_path / "t.jsonl", rows)), tokenizer)
    assert not report.usable
    assert report.train.bad_row_reasons == [
        "line 2: label Funktion='Continuation' is not one of the task's choices (Permission, "
        "Duty, Consequence, Objection); map it with data.label_map or leave the row out"]
    assert report.train.rows_usable == 2


def test_a_label_map_makes_the_rows_usable_and_trains_the_mapped_label(
    tmp_path: Path, write_jsonl: Callable, tokenizer: PreTrainedTokenizerBase
) -> None:
    rows = [{"Funktion": "Continuation", "Text": SENTENCE}, {"Funktion": "Duty", "Text": SENTENCE}]
    recipe = _on(TENANCY, write_jsonl(tmp_path / "t.jsonl", rows),
                 label_map={"Funktion": {"Continuation": "Consequence"}})
    assert build_report(recipe, tokenizer).usable
    train = load_examples(recipe.data, tokenizer, 256, task=task_labels(recipe)).train
    assert train.encoded[0].row["Funktion"] == "Consequence"


@pytest.mark.parametrize(("name", "row", "label"), [
    ("science-curriculum-quiz", {"id": "q", "question": "Which bin?", "answerKey": "E",
                                 "choices": {"text": ["red", "blue"], "label": ["A", "B"]}},
     "answerKey='E'"),
    ("market-news-sentiment", {"text": "Acme beats estimates", "label": 3}, "label=3"),
    ("comment-moderation-de", {"text": "Ein Kommentar", "coarse": 2, "fine": 1}, "coarse=2"),
])
def test_every_kind_of_target_is_checked(
    tmp_path: Path, write_jsonl: Callable, tokenizer: PreTrainedTokenizerBase,
    name: str, row: dict[str, Any], label: str,
) -> None:
    recipe = _on(name, write_jsonl(tmp_path / "t.jsonl", [row]))
    with pytest.raises(DataValidationError, match=f"line 1: label {label}"):
        load_examples(recipe.data, tokenizer, 256, task=task_labels(recipe))


def test_built_in_or_generative_gate_tasks_are_not_checked(tmp_path: Path) -> None:
    recipe = load_recipe("grid-ticket-routing")
    assert task_labels(recipe) is not None
    built_in = recipe.model_copy(update={"eval": recipe.eval.model_copy(update={"tasks": [
        t.model_copy(update={"yaml": None}) for t in recipe.eval.tasks]})})
    assert task_labels(built_in) is None


def test_a_choice_column_and_a_target_column() -> None:
    labels = TaskLabels({"doc_to_choice": "options", "doc_to_target": "gold"})
    labels.check({"options": ["a", "b"], "gold": 1})
    with pytest.raises(Exception, match=r"label 2 is not one of the task's choices \(a, b\)"):
        labels.check({"options": ["a", "b"], "gold": 2})


def test_a_row_without_the_label_column_says_so(tmp_path: Path, write_jsonl: Callable,
                                                tokenizer: PreTrainedTokenizerBase) -> None:
    recipe = _on(TENANCY, write_jsonl(tmp_path / "t.jsonl", [{"Text": SENTENCE}]))
    with pytest.raises(DataValidationError, match="line 1: missing column 'Funktion'"):
        load_examples(recipe.data, tokenizer, 256, task=task_labels(recipe))
