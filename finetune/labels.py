"""Training rows checked against the gate task's answers, before any training.

A multiple-choice task can only score a document whose target is one of its choices; a
training row with a label the task does not know (a data set with more classes than the
recipe) would train the model on an answer it can never be credited for, and a test document
like it fails lm-eval outright (`ValueError: 'X' is not in list`). The check renders the
task's own `doc_to_choice` and `doc_to_target` over each row, as lm-eval does, so it holds
for whatever templates a recipe ships. `data.label_map` renames a data set's labels first.
"""

from __future__ import annotations

import ast
import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

from jinja2 import StrictUndefined, Template, TemplateError, meta
from jinja2.sandbox import SandboxedEnvironment

from events.recipe import Recipe
from finetune.rows import RowError
from stagefiles.tasks import task_config, yaml_task_name

_ENV = SandboxedEnvironment(undefined=StrictUndefined, keep_trailing_newline=True)


@functools.lru_cache(maxsize=256)
def _template(source: str) -> Template:
    """A template compiled once, not once per row: compiling took a millisecond, as much as
    the rest of reading and checking a row (1 s of the pre-flight's and the training stage's
    800 rows of the shipped recipe)."""
    return _ENV.from_string(source)


class TaskLabels:
    """The gate task's choices and target for a row, as lm-eval would compute them."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.choice, self.target = config["doc_to_choice"], config["doc_to_target"]
        self.text, self.description = config.get("doc_to_text", ""), config.get("description", "")
        self.delimiter = str(config.get("target_delimiter", " "))
        self.label_columns = _variables(self.target)
        # What a refusal names: the columns the target reads that are not the choices'.
        self.named_columns = ([c for c in self.label_columns if c not in _variables(self.choice)]
                              or self.label_columns)
        # Choices that do not depend on the row (a list, or a template of none of its
        # columns) may be listed in a refusal; choices read from a row are its data.
        self.fixed_choices = None if _variables(self.choice) else _attempt(self.choices, {})

    def check(self, row: dict[str, Any]) -> None:
        """RowError naming the label's column and the task's choices unless the row's target
        is a choice; never the row's values (choices read from the row are not listed)."""
        missing = [c for c in self.label_columns if c not in row]
        if missing:  # worded as the templates word it
            raise RowError(f"missing column {missing[0]!r}")
        if self.answer(row) is not None:
            return
        columns = self.named_columns or ([self.target] if isinstance(self.target, str)
                                         and self.target in row else [])
        where = (f"column{'s' * (len(columns) > 1)} {', '.join(map(repr, columns))}: "
                 if columns else "")
        if self.fixed_choices is not None:
            known = f"the task's choices ({', '.join(map(str, self.fixed_choices))})"
        else:
            known = "the choices the task reads from the row"
        raise RowError(f"{where}the label is not one of {known}; map it with data.label_map "
                       "or leave the row out")

    def answer(self, row: dict[str, Any]) -> str | None:
        """The row's gold choice, the class lm-eval scores it against (the pre-flight counts
        them for the majority answer's share); None where the templates render no choice."""
        index = self.gold(row)
        return None if index is None else str(self.choices(row)[index])

    def gold(self, row: dict[str, Any]) -> int | None:
        """The position of the row's gold choice among its choices, or None."""
        choices, target = _attempt(self.choices, row), _attempt(self._target, row)
        if choices is None:
            return None
        if isinstance(target, int):
            return target if 0 <= target < len(choices) else None
        return choices.index(target) if isinstance(target, str) and target in choices else None

    def prompt(self, row: dict[str, Any]) -> str:
        """The document's prompt as lm-eval renders it zero-shot (the description, then
        doc_to_text: a column's value or a template); RowError where a template fails."""
        text = _attempt(lambda r: "".join(str(r[t]) if t in r else _template(t).render(r)
                                          for t in (self.description, self.text)), row)
        if text is None:  # the template's message may quote a value: not shown
            raise RowError("the gate task's doc_to_text fails on the row")
        return text

    def choices(self, row: dict[str, Any]) -> list[str]:
        if isinstance(self.choice, list):
            return [str(c) for c in self.choice]
        if isinstance(self.choice, str) and self.choice in row:
            return list(row[self.choice])
        return list(ast.literal_eval(_template(self.choice).render(row)))

    def _target(self, row: dict[str, Any]) -> int | str:
        if isinstance(self.target, int):
            return self.target
        if self.target in row:
            return row[self.target]
        text = _template(self.target).render(row)
        return int(text) if text.strip().isdigit() else text


def _variables(template: object) -> list[str]:
    """The columns a template reads (none for a fixed list, number or plain column name)."""
    if not isinstance(template, str):
        return []
    try:
        return sorted(meta.find_undeclared_variables(_ENV.parse(template)))
    except TemplateError:  # each row's check fails on it as lm-eval would
        return []


def _attempt(render: Callable[[dict[str, Any]], Any], row: dict[str, Any]) -> Any:
    """The template's value for the row, or None where it fails on the row's values."""
    try:
        return render(row)
    except (TemplateError, ValueError, SyntaxError, TypeError, IndexError, KeyError):
        return None


def task_labels(recipe: Recipe) -> TaskLabels | None:
    """The check for the recipe's gate task if it is a multiple-choice task of its own; none
    for preference pairs, whose answers are free text with no label column."""
    if recipe.train.method.preference:
        return None
    task = next(t for t in recipe.eval.tasks if t.name == recipe.gate.task)
    if task.yaml is None:
        return None
    config = task_config(Path(task.yaml), yaml_task_name(task))
    if config.get("output_type") != "multiple_choice" or "doc_to_choice" not in config:
        return None
    return TaskLabels(config)


def mapped(row: dict[str, Any], label_map: dict[str, dict[str, str | int]]) -> dict[str, Any]:
    """The row with each mapped column's value renamed (values compared as text)."""
    if not label_map:
        return row
    return {column: label_map[column].get(str(value), value) if column in label_map else value
            for column, value in row.items()}
