"""Preference pairs: the loss on the answers only, and every unusable pair refused by line
and rule without quoting it."""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from transformers import PreTrainedTokenizerBase

from events.recipe import Recipe
from finetune.data import IGNORE_INDEX, DataValidationError, Split, load_examples
from finetune.preflight import build_report

PAIRS = {"format": "preference"}
DPO = {"method": "dpo", "max_seq_len": 64}
SECRET = "Bürgerin Erika Mustermann"  # what a refusal must never quote


def _pair(i: int = 0, **changes: Any) -> dict[str, Any]:
    return {"prompt": f"Request {i}: my meter shows nothing.",
            "chosen": "The metering team will call you.", "rejected": "Not our problem.",
            **changes}


def _load(make_recipe: Callable[..., Recipe], path: Path, tokenizer: PreTrainedTokenizerBase,
          data: dict[str, Any] | None = None, train: dict[str, Any] | None = None) -> Split:
    recipe = make_recipe(path, data={**PAIRS, **(data or {})}, train={**DPO, **(train or {})})
    return load_examples(recipe.data, tokenizer, recipe.train.max_seq_len).train


def test_the_loss_is_on_each_answer_and_its_eos_only(
        tmp_path: Path, make_recipe: Callable, write_jsonl: Callable,
        tokenizer: PreTrainedTokenizerBase) -> None:
    split = _load(make_recipe, write_jsonl(tmp_path / "p.jsonl", [_pair()]), tokenizer)
    [example] = split.examples
    prompt = tokenizer(_pair()["prompt"])["input_ids"]
    for side in ("chosen", "rejected"):
        answer = [*tokenizer(_pair()[side], add_special_tokens=False)["input_ids"],
                  tokenizer.eos_token_id]
        assert example[f"{side}_input_ids"] == prompt + answer
        assert example[f"{side}_labels"] == [IGNORE_INDEX] * len(prompt) + answer
    assert split.encoded[0].length == 2 * len(prompt) + sum(
        len(example[f"{side}_labels"]) - len(prompt) for side in ("chosen", "rejected"))
    assert split.truncated == 0


def test_chat_pairs_through_a_column_mapping(
        tmp_path: Path, make_recipe: Callable, write_jsonl: Callable,
        tokenizer: PreTrainedTokenizerBase) -> None:
    messages = [{"role": "user", "content": "My meter shows nothing."}]
    row = {"messages": messages, "good": "We will call you.", "bad": "No."}
    split = _load(make_recipe, write_jsonl(tmp_path / "p.jsonl", [row]), tokenizer,
                  data={"columns": {"chosen": "good", "rejected": "bad"}},
                  train={"max_seq_len": 128})
    [example] = split.examples
    prompt = tokenizer(tokenizer.apply_chat_template(messages, tokenize=False,
                                                     add_generation_prompt=True),
                       add_special_tokens=False)["input_ids"]
    answer = example["chosen_labels"][len(prompt):]
    assert example["chosen_labels"][: len(prompt)] == [IGNORE_INDEX] * len(prompt)
    assert example["chosen_input_ids"][: len(prompt)] == prompt
    assert tokenizer.decode(answer).startswith("We will call you.<|im_end|>")


def _refusals(make_recipe: Callable, path: Path, tokenizer: PreTrainedTokenizerBase,
              **data: Any) -> list[str]:
    with pytest.raises(DataValidationError) as err:
        _load(make_recipe, path, tokenizer, data=data)
    assert SECRET not in str(err.value)
    return err.value.problems


def test_one_bad_pair_in_a_thousand_is_refused_by_line_or_skipped_within_the_tolerance(
        tmp_path: Path, make_recipe: Callable, write_jsonl: Callable,
        tokenizer: PreTrainedTokenizerBase) -> None:
    rows = [_pair(i) for i in range(1000)]
    rows[536] = _pair(536, chosen=SECRET, rejected=f"  {SECRET} ")
    path = write_jsonl(tmp_path / "p.jsonl", rows)
    assert _refusals(make_recipe, path, tokenizer) == [
        "line 537: chosen and rejected are the same answer (up to whitespace)"]
    split = _load(make_recipe, path, tokenizer, data={"max_bad_fraction": 0.01})
    assert len(split.encoded) == 999 and split.skipped == [
        "line 537: chosen and rejected are the same answer (up to whitespace)"]


def test_a_file_of_random_bytes_is_refused_by_line(
        tmp_path: Path, make_recipe: Callable, tokenizer: PreTrainedTokenizerBase) -> None:
    path = tmp_path / "p.jsonl"
    path.write_bytes(random.Random(0).randbytes(4096))
    problems = _refusals(make_recipe, path, tokenizer)
    assert problems and all(
        p.startswith("line ") and ("not UTF-8 text" in p or "invalid JSON" in p)
        for p in problems)


@pytest.mark.parametrize(("row", "rule"), [
    (_pair(rejected=""), "column 'rejected' must be a non-empty string"),
    ({"chosen": SECRET, "rejected": "No."}, "column 'prompt' must be a non-empty string"),
    (_pair(chosen=SECRET, rejected=SECRET), "chosen and rejected are the same answer"),
    (_pair(prompt=f"{SECRET} " * 12), "the prompt and the longer answer are"),
    (_pair(chosen=SECRET * 400_000), "column 'chosen' has 10000000 characters, more than "
                                     "max_seq_len 64 tokens can hold"),
    (_pair(messages="hello"), "column 'messages' must be a non-empty list"),
    (_pair(messages=[{"role": "user", "content": SECRET * 1000}]),
     "column 'messages' has 25000 characters, more than max_seq_len 64 tokens can hold"),
])
def test_each_unusable_pair_is_refused_by_line_and_rule_without_its_contents(
        tmp_path: Path, make_recipe: Callable, write_jsonl: Callable,
        tokenizer: PreTrainedTokenizerBase, row: dict[str, Any], rule: str) -> None:
    """Among them a 10 MB row, refused before the tokenizer reads it."""
    path = write_jsonl(tmp_path / "p.jsonl", [_pair(), row])
    [problem] = _refusals(make_recipe, path, tokenizer)
    assert problem.startswith(f"line 2: {rule}")


def test_a_file_of_identical_answers_lists_every_line(
        tmp_path: Path, make_recipe: Callable, write_jsonl: Callable,
        tokenizer: PreTrainedTokenizerBase) -> None:
    path = write_jsonl(tmp_path / "p.jsonl", [_pair(i, rejected=_pair()["chosen"])
                                              for i in range(3)])
    assert [p.split(":")[0] for p in _refusals(make_recipe, path, tokenizer)] == [
        "line 1", "line 2", "line 3"]


def test_the_preflight_reports_pairs_as_training_reads_them(
        tmp_path: Path, make_recipe: Callable, write_jsonl: Callable,
        tokenizer: PreTrainedTokenizerBase) -> None:
    path = write_jsonl(tmp_path / "p.jsonl", [_pair(0), _pair(1), _pair(0), _pair(2, rejected="")])
    recipe = make_recipe(path, data={**PAIRS, "max_bad_fraction": 0.3}, train=DPO)
    report = build_report(recipe, tokenizer)
    train = report.train
    assert report.usable and (train.rows_read, train.rows_usable, train.bad_rows) == (4, 3, 1)
    assert train.duplicate_rows == ["line 3 = line 1"] and train.truncated == 0
    examples = load_examples(recipe.data, tokenizer, recipe.train.max_seq_len).train.encoded
    assert train.max_tokens == examples[0].length == examples[0].trained_length
    assert train.trained_tokens == sum(label != IGNORE_INDEX for e in examples
                                       for side in ("chosen", "rejected")
                                       for label in e.example[f"{side}_labels"])
    chosen, rejected = train.examples[0].text.split("\n\n")
    assert chosen.endswith(f"[/no loss]{_pair()['chosen']}<|im_end|>")
    assert rejected.endswith(f"[/no loss]{_pair()['rejected']}<|im_end|>")
