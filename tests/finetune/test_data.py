"""Rendering, loss masking and row validation, on the real SmolLM2 tokenizer."""

from __future__ import annotations

import csv
import re
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from transformers import PreTrainedTokenizerBase

from events.recipe import Recipe
from finetune.data import (
    IGNORE_INDEX,
    DataValidationError,
    Split,
    collator,
    load_examples,
    read_examples,
)

CHAT = {"format": "chat"}
LONG = {"max_seq_len": 128}  # the chat template's system prompt alone is 20 tokens
ROW = {"text": "Sparks from the pole", "label": "emergency"}


def _load(recipe: Recipe, tokenizer: PreTrainedTokenizerBase) -> Split:
    return load_examples(recipe.data, tokenizer, recipe.train.max_seq_len).train


def test_loss_only_on_completion_and_eos(
    tmp_path: Path, make_recipe: Callable, write_jsonl: Callable, tokenizer: PreTrainedTokenizerBase
) -> None:
    recipe = make_recipe(write_jsonl(tmp_path / "t.jsonl", [ROW]))
    [example] = _load(recipe, tokenizer).examples
    prompt = tokenizer("Ticket: Sparks from the pole\nTeam:")["input_ids"]
    completion = tokenizer(" emergency", add_special_tokens=False)["input_ids"]
    completion.append(tokenizer.eos_token_id)
    assert example["input_ids"] == prompt + completion
    assert example["labels"] == [IGNORE_INDEX] * len(prompt) + completion
    assert example["attention_mask"] == [1] * len(prompt + completion)


def test_every_bad_row_is_named_by_line(
    tmp_path: Path, make_recipe: Callable, write_jsonl: Callable, tokenizer: PreTrainedTokenizerBase
) -> None:
    rows = [
        ROW,
        '{"text": "unclosed"\n',
        "\n",
        {"text": "x"},
        [1, 2],
        {**ROW, "label": ""},
        {**ROW, "text": None},
    ]
    recipe = make_recipe(write_jsonl(tmp_path / "t.jsonl", rows))
    with pytest.raises(DataValidationError) as caught:
        _load(recipe, tokenizer)
    assert [p.split(":")[0] for p in caught.value.problems] == [
        "line 2",
        "line 4",
        "line 5",
        "line 6",
        "line 7",
    ]
    reasons = " | ".join(caught.value.problems)
    for reason in (
        "invalid JSON",
        "missing column 'label'",
        "expected an object",
        "empty completion",
        "column 'text' is null",
    ):
        assert reason in reasons
    assert "line 4: missing column 'label'" in str(caught.value)


def test_bad_rows_within_tolerance_are_skipped_and_listed(
    tmp_path: Path, make_recipe: Callable, write_jsonl: Callable, tokenizer: PreTrainedTokenizerBase
) -> None:
    path = write_jsonl(tmp_path / "t.jsonl", [ROW, ROW, ROW, {"text": "x"}])
    data = _load(make_recipe(path, data={"max_bad_fraction": 0.25}), tokenizer)
    assert len(data.examples) == 3 and data.skipped == ["line 4: missing column 'label'"]
    with pytest.raises(DataValidationError):
        _load(make_recipe(path, data={"max_bad_fraction": 0.2}), tokenizer)


def test_truncation_is_counted_and_a_prompt_filling_the_window_is_an_error(
    tmp_path: Path, make_recipe: Callable, write_jsonl: Callable, tokenizer: PreTrainedTokenizerBase
) -> None:
    prompt_len = len(tokenizer("Ticket: Sparks from the pole\nTeam:")["input_ids"])
    long_label = {**ROW, "label": "emergency " * 20}
    recipe = make_recipe(write_jsonl(tmp_path / "t.jsonl", [ROW, long_label]))
    data = _load(recipe, tokenizer)
    assert data.truncated == 1 and len(data.examples[1]["input_ids"]) == 32
    assert data.examples[1]["labels"][prompt_len] != IGNORE_INDEX

    long_prompt = {**ROW, "text": "sparks " * 40}
    recipe = make_recipe(write_jsonl(tmp_path / "t.jsonl", [ROW, long_prompt]))
    with pytest.raises(DataValidationError, match=r"line 2: the prompt is .* no room"):
        _load(recipe, tokenizer)


def test_csv_and_parquet_files(
    tmp_path: Path, make_recipe: Callable, tokenizer: PreTrainedTokenizerBase
) -> None:
    with open(tmp_path / "t.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, ["text", "label"])
        writer.writeheader()
        writer.writerows([ROW, {"text": "x", "label": ""}])
    with pytest.raises(DataValidationError, match="line 3: empty completion"):
        _load(make_recipe(tmp_path / "t.csv"), tokenizer)

    pq.write_table(
        pa.Table.from_pylist([ROW, {"text": "x", "label": None}]), tmp_path / "t.parquet"
    )
    with pytest.raises(DataValidationError, match="row 2: column 'label' is null"):
        _load(make_recipe(tmp_path / "t.parquet"), tokenizer)


@pytest.mark.parametrize(
    ("name", "content", "problem"),
    [
        ("missing.jsonl", None, "no such file"),
        ("empty.jsonl", "\n", "there are no rows"),
        ("rows.txt", "x", "unsupported file type '.txt'"),
    ],
)
def test_unreadable_files(
    tmp_path: Path,
    make_recipe: Callable,
    tokenizer: PreTrainedTokenizerBase,
    name: str,
    content: str | None,
    problem: str,
) -> None:
    if content is not None:
        (tmp_path / name).write_text(content)
    with pytest.raises(DataValidationError, match=re.escape(problem)):
        _load(make_recipe(tmp_path / name), tokenizer)


def test_template_errors_are_row_problems(
    tmp_path: Path, make_recipe: Callable, write_jsonl: Callable, tokenizer: PreTrainedTokenizerBase
) -> None:
    recipe = make_recipe(
        write_jsonl(tmp_path / "t.jsonl", [ROW, {**ROW, "text": "plain"}]),
        data={"prompt_template": "{{ text.upper() }} {{ text.missing }}"},
    )
    with pytest.raises(DataValidationError) as caught:
        _load(recipe, tokenizer)
    assert caught.value.problems[0] == (
        "line 1: template error in data.prompt_template (UndefinedError)")


SECRET = "SECRET-MARKER-9c2d"


@pytest.mark.parametrize(("data", "problem"), [
    # The message would name the key looked up: the row's value.
    ({"prompt_template": "{{ {'a': 'b'}[text] }}"},
     "template error in data.prompt_template (UndefinedError)"),
    ({"completion_template": "{{ text.index(label) }}"},  # ValueError: substring not found
     "template error in data.completion_template (ValueError)"),
    ({"prompt_template": "{{ text + 1 }}"},  # TypeError: no longer a crash of the stage
     "template error in data.prompt_template (TypeError)"),
    ({"prompt_template": "{{ 1 // (text|length - text|length) }}"},
     "template error in data.prompt_template (ZeroDivisionError)"),
])
def test_a_template_failing_on_a_row_is_a_row_problem_that_quotes_nothing(
    tmp_path: Path, make_recipe: Callable, write_jsonl: Callable,
    tokenizer: PreTrainedTokenizerBase, data: dict, problem: str,
) -> None:
    rows = [{"text": SECRET, "label": f"{SECRET}-label"}]
    recipe = make_recipe(write_jsonl(tmp_path / "t.jsonl", rows), data=data)
    with pytest.raises(DataValidationError) as caught:
        _load(recipe, tokenizer)
    assert caught.value.problems == [f"line 1: {problem}"]
    assert SECRET not in str(caught.value)


def test_a_chat_template_refusing_a_conversation_is_a_row_problem_that_quotes_nothing(
    tmp_path: Path, make_recipe: Callable, write_jsonl: Callable,
    tokenizer: PreTrainedTokenizerBase,
) -> None:
    tokenizer.chat_template = (  # as some models' templates do, quoting what they refuse
        "{% for m in messages %}{% if m['role'] not in ['system', 'user', 'assistant'] %}"
        "{{ raise_exception('unknown role ' + m['role']) }}{% endif %}{% endfor %}"
        + tokenizer.chat_template)
    rows = [{"messages": [{"role": "user", "content": "Sparks"},
                          {"role": "assistant", "content": "emergency"}]},
            {"messages": [{"role": SECRET, "content": SECRET},
                          {"role": "assistant", "content": SECRET}]}]
    recipe = make_recipe(write_jsonl(tmp_path / "t.jsonl", rows), data=CHAT, train=LONG)
    with pytest.raises(DataValidationError) as caught:
        _load(recipe, tokenizer)
    assert caught.value.problems == [
        "line 2: the chat template refuses the conversation (TemplateError)"]
    assert SECRET not in str(caught.value)


def test_text_trains_on_every_token(
    tmp_path: Path, make_recipe: Callable, write_jsonl: Callable, tokenizer: PreTrainedTokenizerBase
) -> None:
    rows = [{"text": "Grid codes set the voltage band."}, {"text": "  "}, {"body": "x"}]
    recipe = make_recipe(write_jsonl(tmp_path / "t.jsonl", rows), data={"format": "text"})
    with pytest.raises(DataValidationError) as caught:
        _load(recipe, tokenizer)
    assert caught.value.problems == [
        "line 2: column 'text' must be a non-empty string",
        "line 3: column 'text' must be a non-empty string",
    ]
    recipe = make_recipe(write_jsonl(tmp_path / "t.jsonl", rows[:1]), data={"format": "text"})
    [example] = _load(recipe, tokenizer).examples
    assert example["labels"] == example["input_ids"]
    assert example["input_ids"][-1] == tokenizer.eos_token_id


def test_instruction_uses_the_chat_template_and_a_column_mapping(
    tmp_path: Path, make_recipe: Callable, write_jsonl: Callable, tokenizer: PreTrainedTokenizerBase
) -> None:
    rows = [{"task": "Route the ticket.", "context": "Sparks from the pole", "answer": "emergency"},
            {"task": "Route the ticket.", "answer": "accounts"},
            {"task": "Route the ticket."}]
    data = {"format": "instruction",
            "columns": {"instruction": "task", "input": "context", "output": "answer"}}
    recipe = make_recipe(write_jsonl(tmp_path / "t.jsonl", rows), data=data, train=LONG)
    with pytest.raises(DataValidationError) as caught:
        _load(recipe, tokenizer)
    assert caught.value.problems == [
        "line 2: missing column 'context' (mapped to 'input')",
        "line 3: missing column 'context' (mapped to 'input')",
    ]
    rows[1]["context"], rows[2]["context"] = None, None
    recipe = make_recipe(write_jsonl(tmp_path / "t.jsonl", rows), data=data, train=LONG)
    with pytest.raises(DataValidationError) as caught:
        _load(recipe, tokenizer)
    assert caught.value.problems == ["line 3: missing column 'answer' (mapped to 'output')"]

    recipe = make_recipe(write_jsonl(tmp_path / "t.jsonl", rows[:2]), data=data, train=LONG)
    first, second = _load(recipe, tokenizer).examples
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Route the ticket.\n\nSparks from the pole"},
         {"role": "assistant", "content": "emergency"}], tokenize=False)
    assert first["input_ids"] == tokenizer(text, add_special_tokens=False)["input_ids"]
    trained = [t for t in first["labels"] if t != IGNORE_INDEX]
    assert tokenizer.decode(trained) == "emergency<|im_end|>\n"
    assert "accounts" in tokenizer.decode([t for t in second["labels"] if t != IGNORE_INDEX])


def test_chat_trains_on_assistant_turns_only(
    tmp_path: Path, make_recipe: Callable, write_jsonl: Callable, tokenizer: PreTrainedTokenizerBase
) -> None:
    messages = [
        {"role": "user", "content": "Sparks from the pole"},
        {"role": "assistant", "content": "emergency"},
        {"role": "user", "content": "And a bill?"},
        {"role": "assistant", "content": "accounts"},
    ]
    rows = [
        {"messages": messages},
        {"messages": messages[:1]},
        {"messages": "hi"},
        {"messages": [{"role": "user"}]},
    ]
    recipe = make_recipe(write_jsonl(tmp_path / "t.jsonl", rows), data=CHAT, train=LONG)
    with pytest.raises(DataValidationError) as caught:
        _load(recipe, tokenizer)
    assert [p.split(":")[0] for p in caught.value.problems] == ["line 2", "line 3", "line 4"]

    recipe = make_recipe(write_jsonl(tmp_path / "t.jsonl", rows[:1]), data=CHAT, train=LONG)
    [example] = _load(recipe, tokenizer).examples
    text = tokenizer.apply_chat_template(messages, tokenize=False)
    assert example["input_ids"] == tokenizer(text, add_special_tokens=False)["input_ids"]
    trained = [t for t in example["labels"] if t != IGNORE_INDEX]
    assert tokenizer.decode(trained) == "emergency<|im_end|>\naccounts<|im_end|>\n"


def test_collator_pads_without_loss(tokenizer: PreTrainedTokenizerBase) -> None:
    short = {"input_ids": [5, 6], "attention_mask": [1, 1], "labels": [IGNORE_INDEX, 6]}
    long = {"input_ids": [5, 6, 7], "attention_mask": [1, 1, 1], "labels": [IGNORE_INDEX, 6, 7]}
    batch = collator(tokenizer, packing=False)([short, long])
    assert batch["input_ids"].shape == (2, 3)
    assert batch["attention_mask"][0].tolist() == [1, 1, 0]
    assert batch["labels"][0].tolist() == [IGNORE_INDEX, 6, IGNORE_INDEX]


def test_collator_falls_back_to_eos_for_padding(tokenizer: PreTrainedTokenizerBase) -> None:
    tokenizer.pad_token = None
    collator(tokenizer, packing=False)
    assert tokenizer.pad_token == tokenizer.eos_token


def test_tokenizer_without_eos_or_chat_template_is_refused(
    tmp_path: Path, make_recipe: Callable, write_jsonl: Callable, tokenizer: PreTrainedTokenizerBase
) -> None:
    path = write_jsonl(tmp_path / "t.jsonl", [ROW])
    tokenizer.chat_template = None
    with pytest.raises(ValueError, match="needs a tokenizer with a chat template"):
        _load(make_recipe(path, data={"format": "chat"}), tokenizer)
    tokenizer.eos_token = None
    with pytest.raises(ValueError, match="no EOS token"):
        _load(make_recipe(path), tokenizer)


def test_validation_file_is_checked_like_training_data_and_named(
    tmp_path: Path, make_recipe: Callable, write_jsonl: Callable, tokenizer: PreTrainedTokenizerBase
) -> None:
    validation = write_jsonl(tmp_path / "valid.jsonl", [ROW, {"text": "x"}])
    recipe = make_recipe(write_jsonl(tmp_path / "t.jsonl", [ROW, ROW]),
                         data={"validation_file": str(validation)})
    data = read_examples(recipe.data, tokenizer, recipe.train.max_seq_len)
    assert data.validation is not None and len(data.validation.examples) == 1
    with pytest.raises(DataValidationError, match=r"valid\.jsonl: .*\n  line 2: missing column"):
        load_examples(recipe.data, tokenizer, recipe.train.max_seq_len)


def test_validation_split_holds_out_seeded_rows(
    tmp_path: Path, make_recipe: Callable, write_jsonl: Callable, tokenizer: PreTrainedTokenizerBase
) -> None:
    rows = [{**ROW, "text": f"ticket number {i}"} for i in range(20)]
    recipe = make_recipe(write_jsonl(tmp_path / "t.jsonl", rows), data={"validation_split": 0.2})

    def split(seed: int) -> tuple[list[str], list[str]]:
        data = load_examples(recipe.data, tokenizer, recipe.train.max_seq_len, seed)
        assert data.validation is not None
        return ([e.where for e in data.train.encoded], [e.where for e in data.validation.encoded])

    train, held_out = split(seed=1)
    assert len(held_out) == 4 and len(train) == 16
    assert sorted(train + held_out) == sorted(f"line {i}" for i in range(1, 21))
    assert split(seed=1) == (train, held_out)


def test_validation_split_must_leave_training_rows(
    tmp_path: Path, make_recipe: Callable, write_jsonl: Callable, tokenizer: PreTrainedTokenizerBase
) -> None:
    recipe = make_recipe(write_jsonl(tmp_path / "t.jsonl", [ROW]), data={"validation_split": 0.5})
    with pytest.raises(DataValidationError, match=r"data\.validation_split 0\.5 .* leaves none"):
        load_examples(recipe.data, tokenizer, recipe.train.max_seq_len)


def test_local_dataset_folder_is_read_as_a_hub_dataset(
    tmp_path: Path, make_recipe: Callable, write_jsonl: Callable, tokenizer: PreTrainedTokenizerBase
) -> None:
    folder = tmp_path / "tickets"
    folder.mkdir()
    write_jsonl(folder / "train.jsonl", [ROW, {**ROW, "label": "accounts"}, ROW])
    write_jsonl(folder / "validation.jsonl", [ROW])
    recipe = make_recipe(tmp_path / "unused.jsonl", data={
        "train_file": None, "dataset": str(folder), "dataset_validation_split": "validation"})
    data = load_examples(recipe.data, tokenizer, recipe.train.max_seq_len)
    assert [e.where for e in data.train.encoded] == ["row 1", "row 2", "row 3"]
    assert data.train.source == f"hub dataset {str(folder)!r} split 'train'"
    assert data.validation is not None and len(data.validation.examples) == 1
    assert data.train.examples[0] == _load(
        make_recipe(write_jsonl(tmp_path / "t.jsonl", [ROW])), tokenizer).examples[0]


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        ({"dataset": "nosuch-org/nosuch-tickets"}, "data.dataset 'nosuch-org/nosuch-tickets'"),
        ({"dataset_split": "test"}, 'Unknown split "test"'),
    ],
)
def test_unloadable_hub_dataset_names_the_field_and_id(
    tmp_path: Path, make_recipe: Callable, write_jsonl: Callable,
    tokenizer: PreTrainedTokenizerBase, data: dict, fragment: str,
) -> None:
    folder = tmp_path / "tickets"
    folder.mkdir()
    write_jsonl(folder / "train.jsonl", [ROW])
    recipe = make_recipe(tmp_path / "unused.jsonl",
                         data={"train_file": None, "dataset": str(folder), **data})
    with pytest.raises(DataValidationError, match="cannot be loaded") as caught:
        load_examples(recipe.data, tokenizer, recipe.train.max_seq_len)
    assert fragment in str(caught.value)
