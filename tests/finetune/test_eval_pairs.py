"""Held-out preference pairs in the chat `messages` form (or mapped columns) are scored as
pairs in the gate task's columns: the pre-flight copies them, each conversation rendered by
the chat template up to the assistant's turn, and refuses a row it cannot copy by line."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from transformers import PreTrainedTokenizerBase

from events.recipe import Recipe
from events.recipe_eval import EvalTask
from finetune.preflight import build_report
from recipes import RECIPES_DIR

TASK = RECIPES_DIR / "public_sector/citizen_reply_de_dpo/tasks/citizen_reply_preference_de.yaml"


def _pair(i: int) -> dict[str, Any]:
    return {"messages": [{"role": "system", "content": "Sie sind das Bürgerbüro."},
                         {"role": "user", "content": f"Vorgang {i}: Der Zähler ist kaputt."}],
            "chosen": f"Vorgang {i}: Zuständig ist das Tiefbauamt.",
            "rejected": f"Vorgang {i}: Dafür sind wir nicht zuständig."}


def _recipe(make_recipe: Callable[..., Recipe], train_file: Path, **data: Any) -> Recipe:
    """A DPO recipe gated on the shipped preference task over its own evaluation rows."""
    recipe = make_recipe(train_file, data={"format": "preference", **data},
                         train={"method": "dpo", "max_seq_len": 128})
    task = EvalTask(name="citizen_reply_preference_de", yaml=str(TASK))
    return recipe.model_copy(update={
        "eval": recipe.eval.model_copy(update={"tasks": [task]}),
        "gate": recipe.gate.model_copy(update={  # a gate a few rows can pass: not the point
            "task": task.name, "alpha": 1.0, "min_gain": -1.0})}).gated_on_own_eval()


def _rows(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_messages_form_evaluation_pairs_are_copied_with_the_rendered_prompt(
        tmp_path: Path, make_recipe: Callable[..., Recipe], write_jsonl: Callable,
        tokenizer: PreTrainedTokenizerBase) -> None:
    pairs = [_pair(i) for i in range(6)]
    given = write_jsonl(tmp_path / "eval.jsonl", pairs)
    recipe = _recipe(make_recipe, write_jsonl(tmp_path / "train.jsonl", pairs),
                     eval_file=str(given))
    report = build_report(recipe, tokenizer, tmp_path / "job")
    assert report.usable, report.reason
    assert report.eval_pairs is not None and report.eval_pairs.rows == 6
    copy = Path(report.eval_pairs.eval_file)
    assert copy.parent == tmp_path / "job" / "held_out"
    assert _rows(copy) == [{"prompt": tokenizer.apply_chat_template(
        p["messages"], tokenize=False, add_generation_prompt=True),
        "chosen": p["chosen"], "rejected": p["rejected"]} for p in pairs]
    assert all(r["prompt"].endswith("assistant\n") for r in _rows(copy))
    applied = report.eval_pairs.applied_to(recipe)  # as the orchestrator freezes the job
    assert applied.data.eval_file == str(copy)
    assert [t.data_file for t in applied.eval.tasks] == [str(copy), None]  # own task, shipped


def test_held_out_pairs_of_messages_form_training_data_are_copied_too(
        tmp_path: Path, make_recipe: Callable[..., Recipe], write_jsonl: Callable,
        tokenizer: PreTrainedTokenizerBase) -> None:
    train = write_jsonl(tmp_path / "train.jsonl", [_pair(i) for i in range(10)])
    report = build_report(_recipe(make_recipe, train, eval_split=0.2), tokenizer,
                          tmp_path / "job")
    assert report.usable, report.reason
    assert report.held_out is not None and report.eval_pairs is not None
    assert report.eval_pairs.rows == report.held_out.eval_rows == 2
    assert all(set(r) == {"prompt", "chosen", "rejected"}
               for r in _rows(Path(report.eval_pairs.eval_file)))


def test_prompt_form_pairs_are_read_as_they_are_and_mapped_columns_are_copied(
        tmp_path: Path, make_recipe: Callable[..., Recipe], write_jsonl: Callable,
        tokenizer: PreTrainedTokenizerBase) -> None:
    plain = [{"prompt": f"Vorgang {i}:", "chosen": " Tiefbauamt.", "rejected": " Nein."}
             for i in range(4)]
    train = write_jsonl(tmp_path / "train.jsonl", plain)
    given = write_jsonl(tmp_path / "eval.jsonl", plain)
    report = build_report(_recipe(make_recipe, train, eval_file=str(given)), tokenizer)
    assert report.usable and report.eval_pairs is None  # the gate task reads the file itself

    mapped = [{"frage": p["prompt"], "gut": p["chosen"], "schlecht": p["rejected"]}
              for p in plain]
    columns = {"prompt": "frage", "chosen": "gut", "rejected": "schlecht"}
    recipe = _recipe(make_recipe, write_jsonl(tmp_path / "train-mapped.jsonl", mapped),
                     eval_file=str(write_jsonl(tmp_path / "eval-mapped.jsonl", mapped)),
                     columns=columns)
    report = build_report(recipe, tokenizer, tmp_path / "job")
    assert report.usable, report.reason
    assert report.eval_pairs is not None
    assert _rows(Path(report.eval_pairs.eval_file)) == plain


def test_an_evaluation_pair_that_cannot_be_copied_is_refused_by_line(
        tmp_path: Path, make_recipe: Callable[..., Recipe], write_jsonl: Callable,
        tokenizer: PreTrainedTokenizerBase) -> None:
    pairs = [_pair(i) for i in range(4)]
    secret = "SECRET-5c1d"
    broken = [*pairs[:2], {**pairs[2], "messages": [{"role": "user", "content": 7}],
                           "note": secret}, pairs[3]]
    recipe = _recipe(make_recipe, write_jsonl(tmp_path / "train.jsonl", pairs),
                     eval_file=str(write_jsonl(tmp_path / "eval.jsonl", broken)))
    report = build_report(recipe, tokenizer, tmp_path / "job")
    assert not report.usable and report.eval_pairs is None
    assert ("line 3: column 'messages' must be a non-empty list of messages with string "
            "'role' and 'content'") in report.reason
    assert secret not in report.reason
