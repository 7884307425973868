"""Evaluation pairs as the gate task reads them, in any form training accepts.

A preference recipe's gate task (lm-eval multiple choice over the two answers) reads the
columns `prompt`, `chosen` and `rejected` of its rows. Training also accepts a chat
`messages` list in place of `prompt`, and other column names through `data.columns`; the
evaluation rows (`data.eval_file`, or the rows `data.eval_split` held out) in such a form
are written again in the job directory with those three columns, `prompt` being the
conversation as the model's chat template renders it up to the assistant's turn (what
training puts before each answer). Rows already in that form are read as they are.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from transformers import PreTrainedTokenizerBase

from events.recipe import Recipe
from events.recipe_data import DataFormat
from finetune.data import RENDER_ERRORS, _string
from finetune.held_out import FOLDER
from finetune.rows import DataValidationError, RowError, checked_rows
from stagefiles.preflight_report import EvalPairs

ANSWERS = ("chosen", "rejected")


def evaluated_pairs(recipe: Recipe, tokenizer: PreTrainedTokenizerBase, work_dir: Path
                    ) -> EvalPairs | None:
    """The copy of the recipe's evaluation pairs in the gate task's columns, or None where
    the rows need none (not preference data, no data.eval_file, or already in that form);
    DataValidationError naming each row the copy cannot be made of, by line and rule."""
    data = recipe.data
    if data.format is not DataFormat.preference or data.eval_file is None:
        return None
    source = Path(data.eval_file)
    rows, problems, converted = [], [], bool(data.columns)
    for where, row in checked_rows(source):
        try:
            if isinstance(row, RowError):
                raise row
            row = {**row, **{name: row[column] for name, column in data.columns.items()
                             if column in row}}
            converted = converted or "messages" in row
            rows.append({"prompt": _prompt(row, tokenizer),
                         **{name: _string(row, name) for name in ANSWERS}})
        except RowError as exc:
            problems.append(f"{where}: {exc}")
    if problems:
        raise DataValidationError(source, problems, len(rows) + len(problems))
    if not converted:
        return None
    copy = work_dir / FOLDER / "eval_pairs.jsonl"
    copy.parent.mkdir(parents=True, exist_ok=True)
    copy.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows),
                    encoding="utf-8")
    return EvalPairs(source=str(source), eval_file=str(copy), rows=len(rows))


def _prompt(row: dict[str, Any], tokenizer: PreTrainedTokenizerBase) -> str:
    """The row's prompt text, or its conversation rendered up to the assistant's turn."""
    if "messages" not in row:
        return _string(row, "prompt")
    messages = row["messages"]
    if not (isinstance(messages, list) and messages and all(
            isinstance(m, dict) and isinstance(m.get("role"), str)
            and isinstance(m.get("content"), str) for m in messages)):
        raise RowError("column 'messages' must be a non-empty list of messages with string "
                       "'role' and 'content'")
    if not tokenizer.chat_template:
        raise RowError("column 'messages' needs a tokenizer with a chat template")
    try:
        return tokenizer.apply_chat_template(messages, tokenize=False,
                                             add_generation_prompt=True)
    except RENDER_ERRORS as exc:  # their messages may quote the row
        raise RowError("the chat template refuses the conversation "
                       f"({type(exc).__name__})") from exc
