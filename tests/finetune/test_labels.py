"""Training rows whose label is not one of the gate task's choices are refused by line and
column, through the task's own templates, never quoting the row; `data.label_map` renames a
data set's labels."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from transformers import PreTrainedTokenizerBase

from events.recipe import Recipe
from finetune.data import DataValidationError, load_examples
from finetune.labels import TaskLabels, task_labels
from finetune.preflight import build_report
from finetune.rows import RowError
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
        "line 2: column 'Funktion': the label is not one of the task's choices (Permission, "
        "Duty, Consequence, Objection); map it with data.label_map or leave the row out"]
    assert report.train.rows_usable == 2
    assert "Continuation" not in report.reason + report.to_text()


def test_a_label_map_makes_the_rows_usable_and_trains_the_mapped_label(
    tmp_path: Path, write_jsonl: Callable, tokenizer: PreTrainedTokenizerBase
) -> None:
    rows = [{"Funktion": "Continuation", "Text": SENTENCE}, {"Funktion": "Duty", "Text": SENTENCE}]
    recipe = _on(TENANCY, write_jsonl(tmp_path / "t.jsonl", rows),
                 label_map={"Funktion": {"Continuation": "Consequence"}})
    assert build_report(recipe, tokenizer).usable
    train = load_examples(recipe.data, tokenizer, 256, task=task_labels(recipe)).train
    assert train.encoded[0].row["Funktion"] == "Consequence"


MARKER = "SECRET-MARKER-0b7e"


@pytest.mark.parametrize(("name", "row", "reason"), [
    ("science-curriculum-quiz", {"id": MARKER, "question": MARKER, "answerKey": MARKER,
                                 "choices": {"text": [MARKER], "label": [f"{MARKER}-A"]}},
     "column 'answerKey': the label is not one of the choices the task reads from the row"),
    ("market-news-sentiment", {"text": MARKER, "label": 3},
     "column 'label': the label is not one of the task's choices (bearish, bullish, neutral)"),
    ("market-news-sentiment", {"text": MARKER, "label": MARKER},
     "column 'label': the label is not one of the task's choices (bearish, bullish, neutral)"),
    ("comment-moderation-de", {"text": MARKER, "coarse": 2, "fine": MARKER},
     "column 'coarse': the label is not one of the task's choices (OTHER, OFFENSE)"),
    ("tenancy-law-sentence-function-de", {"Funktion": {MARKER: [MARKER]}, "Text": MARKER},
     "column 'Funktion': the label is not one of the task's choices (Permission, Duty"),
])
def test_every_kind_of_target_is_checked_and_the_refusal_quotes_no_value(
    tmp_path: Path, write_jsonl: Callable, tokenizer: PreTrainedTokenizerBase,
    name: str, row: dict[str, Any], reason: str,
) -> None:
    recipe = _on(name, write_jsonl(tmp_path / "t.jsonl", [row]))
    with pytest.raises(DataValidationError, match=f"line 1: {re.escape(reason)}") as caught:
        load_examples(recipe.data, tokenizer, 256, task=task_labels(recipe))
    assert MARKER not in str(caught.value)


def test_built_in_or_generative_gate_tasks_are_not_checked(tmp_path: Path) -> None:
    recipe = load_recipe("grid-ticket-routing")
    assert task_labels(recipe) is not None
    built_in = recipe.model_copy(update={"eval": recipe.eval.model_copy(update={"tasks": [
        t.model_copy(update={"yaml": None}) for t in recipe.eval.tasks]})})
    assert task_labels(built_in) is None


def test_a_choice_column_and_a_target_column() -> None:
    labels = TaskLabels({"doc_to_choice": "options", "doc_to_target": "gold"})
    labels.check({"options": ["a", "b"], "gold": 1})
    with pytest.raises(RowError) as caught:  # the row's own choices are its data too
        labels.check({"options": [MARKER, "b"], "gold": 2})
    assert str(caught.value).startswith("column 'gold': the label is not one of the choices "
                                        "the task reads from the row;")
    assert MARKER not in str(caught.value)


def test_fixed_choices_rendered_by_a_template_are_listed() -> None:
    labels = TaskLabels({"doc_to_choice": "{{ ['low', 'high'] }}", "doc_to_target": "{{ x }}"})
    with pytest.raises(RowError, match=r"^column 'x': the label is not one of the task's "
                                       r"choices \(low, high\);"):
        labels.check({"x": MARKER})


def test_a_row_without_the_label_column_says_so(tmp_path: Path, write_jsonl: Callable,
                                                tokenizer: PreTrainedTokenizerBase) -> None:
    recipe = _on(TENANCY, write_jsonl(tmp_path / "t.jsonl", [{"Text": SENTENCE}]))
    with pytest.raises(DataValidationError, match="line 1: missing column 'Funktion'"):
        load_examples(recipe.data, tokenizer, 256, task=task_labels(recipe))
