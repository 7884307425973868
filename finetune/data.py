"""Training rows -> token ids with the loss masked to what the model should learn to write.

Every row is checked before any training starts: a typo in row 7,000 must fail the job in
seconds with its line number, not after an hour of GPU time, and never be trained on silently.
Reading the rows is `finetune.rows` (no torch), which the web app runs on an upload too.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from jinja2 import StrictUndefined, Template, TemplateError, meta
from jinja2.sandbox import SandboxedEnvironment
from transformers import (
    DataCollatorForSeq2Seq,
    DataCollatorWithFlattening,
    PreTrainedTokenizerBase,
)

from events.recipe_data import DataFormat, DataSection
from finetune.labels import TaskLabels, mapped
from finetune.rows import (
    DataValidationError,
    HubSplit,
    RowError,
    check_counts,
    checked_rows,
    record,
)

IGNORE_INDEX = -100


class TokenizerUnfitError(ValueError):
    """The base model's tokenizer cannot encode this data format (the recipe must change)."""

Example = dict[str, list[int]]
Encoder = Callable[[dict[str, Any]], tuple[list[int], list[int]]]
RowEncoder = Callable[[dict[str, Any]], tuple[Example, int]]
"""A row -> (the example as trained, its tokens before truncation to max_seq_len)."""


@dataclass(frozen=True)
class Encoded:
    """One usable row: where it came from, the row itself and the example as trained."""

    where: str
    row: dict[str, Any]
    example: Example
    length: int  # tokens before truncation to max_seq_len

    @property
    def trained_length(self) -> int:
        """Tokens the forward pass reads: after truncation, both sequences of a pair."""
        return sum(len(ids) for ids, _ in sequences(self.example))

    @property
    def truncated(self) -> bool:
        return self.length > self.trained_length


def sequences(example: Example) -> list[tuple[list[int], list[int]]]:
    """(token ids, labels) of each sequence an example trains on: its one, or a preference
    pair's chosen and rejected (`finetune.preference_data`)."""
    sides = PAIR_SIDES if PAIR_SIDES[0] + "input_ids" in example else ("",)
    return [(example[side + "input_ids"], example[side + "labels"]) for side in sides]


PAIR_SIDES = ("chosen_", "rejected_")


@dataclass(frozen=True)
class Split:
    """One split after validation and tokenisation; training and the pre-flight report read
    the same object, so the report shows exactly what would be trained on."""

    source: str
    rows: int
    encoded: list[Encoded]
    skipped: list[str] = field(default_factory=list)  # "line N: reason" per bad row

    @property
    def examples(self) -> list[Example]:
        return [e.example for e in self.encoded]

    @property
    def truncated(self) -> int:
        return sum(e.truncated for e in self.encoded)

    def check(self, max_bad_fraction: float) -> None:
        """Raise DataValidationError if more rows are bad than `max_bad_fraction` allows."""
        check_counts(self.source, self.rows, len(self.encoded), self.skipped, max_bad_fraction)


@dataclass(frozen=True)
class TokenizedData:
    train: Split
    validation: Split | None = None


def read_examples(
    data: DataSection, tokenizer: PreTrainedTokenizerBase, max_seq_len: int, seed: int = 0,
    task: TaskLabels | None = None,
) -> TokenizedData:
    """Read, validate and tokenise the training and validation rows; bad rows (a label that
    is not one of the `task`'s choices among them) are listed in each split's `skipped`, not
    raised (see `load_examples`)."""
    if tokenizer.eos_token_id is None:
        raise TokenizerUnfitError(
            "the tokenizer has no EOS token, so the model could not learn to stop")
    encode = _row_encoder(data, tokenizer, max_seq_len)
    train_source, validation_source = sources(data)
    read = lambda source: _read_split(source, encode, task, data.label_map)  # noqa: E731
    train = read(train_source)
    if validation_source is not None:
        return TokenizedData(train, read(validation_source))
    if data.validation_split and train.encoded:
        return TokenizedData(*_hold_out(train, data.validation_split, seed))
    return TokenizedData(train)


def load_examples(
    data: DataSection, tokenizer: PreTrainedTokenizerBase, max_seq_len: int, seed: int = 0,
    task: TaskLabels | None = None,
) -> TokenizedData:
    """`read_examples`, refusing any split with more bad rows than `data.max_bad_fraction`.

    Bad rows within the fraction are skipped and listed; above it DataValidationError names
    every one by line, before any training starts.
    """
    data_read = read_examples(data, tokenizer, max_seq_len, seed, task)
    for split in (data_read.train, data_read.validation):
        if split is not None:
            split.check(data.max_bad_fraction)
    return data_read


def collator(
    tokenizer: PreTrainedTokenizerBase, packing: bool
) -> DataCollatorForSeq2Seq | DataCollatorWithFlattening:
    """Batches without pad tokens (packing) or padded to the longest row; no loss on padding.

    A packed batch is one row with position ids restarting at 0 for every example, which
    transformers turns into a block-diagonal causal mask, so examples never attend to each
    other. That holds only without a KV cache: the model must run with `use_cache=False`.
    """
    if packing:
        return DataCollatorWithFlattening(separator_id=IGNORE_INDEX)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return DataCollatorForSeq2Seq(tokenizer, padding="longest", label_pad_token_id=IGNORE_INDEX)


REAL_TOKENS = "real_tokens"
"""A batch's own count of its real tokens, where neither its shape nor an attention mask
tells them (packed rows padded to one width); not a model input."""


def real_tokens(batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Tokens of the examples themselves, padding not counted: what throughput is quoted in."""
    if REAL_TOKENS in batch:
        return batch[REAL_TOKENS]
    if "attention_mask" in batch:
        return batch["attention_mask"].sum()
    return torch.tensor(batch["input_ids"].numel(), device=batch["input_ids"].device)


def sources(data: DataSection) -> tuple[Path | HubSplit, Path | HubSplit | None]:
    """Training and validation source: a local train file wins over the hub dataset."""
    if data.train_file is not None:
        train: Path | HubSplit = Path(data.train_file)
        hub_validation = None
    else:
        train = HubSplit(data.dataset or "", data.dataset_config, data.dataset_split)
        hub_validation = data.dataset_validation_split
    if data.validation_file is not None:
        return train, Path(data.validation_file)
    if hub_validation is not None:
        return train, HubSplit(data.dataset or "", data.dataset_config, hub_validation)
    return train, None


def _read_split(source: Path | HubSplit, encode: RowEncoder, task: TaskLabels | None,
                label_map: dict[str, dict[str, str | int]]) -> Split:
    encoded: list[Encoded] = []
    problems: list[str] = []
    rows = 0
    for where, raw in checked_rows(source):
        rows += 1
        try:
            row = mapped(record(raw), label_map)
            if task is not None:  # before the templates, which may fail on such a label
                task.check(row)
            example, length = encode(row)
        except RowError as exc:
            problems.append(f"{where}: {exc}")
            continue
        encoded.append(Encoded(where, row, example, length))
    return Split(str(source), rows, encoded, problems)


def _hold_out(train: Split, fraction: float, seed: int) -> tuple[Split, Split]:
    """Move a seeded random `fraction` (at least one) of the usable rows to validation."""
    count = max(1, round(fraction * len(train.encoded)))
    if count >= len(train.encoded):
        problem = (f"data.validation_split {fraction:g} of {len(train.encoded)} usable row(s) "
                   "leaves none to train on")
        raise DataValidationError(train.source, [problem], train.rows)
    held = set(random.Random(seed).sample(range(len(train.encoded)), count))
    keep = [e for i, e in enumerate(train.encoded) if i not in held]
    validation = [e for i, e in enumerate(train.encoded) if i in held]
    return (
        replace(train, rows=train.rows - count, encoded=keep),
        Split(f"{train.source} (validation_split {fraction:g})", count, validation),
    )


def _row_encoder(data: DataSection, tokenizer: PreTrainedTokenizerBase,
                 max_seq_len: int) -> RowEncoder:
    """The format's encoder, reading the columns `data.columns` maps."""
    if data.format is DataFormat.preference:
        from finetune.preference_data import PairEncoder  # which builds on this module

        encode: RowEncoder = PairEncoder(tokenizer, max_seq_len)
    else:
        encode = _fitted(_encoder(data, tokenizer), max_seq_len)
    if not data.columns:
        return encode

    def renamed(row: dict[str, Any]) -> tuple[Example, int]:
        for name, column in data.columns.items():
            if column not in row:
                raise RowError(f"missing column {column!r} (mapped to {name!r})")
        return encode({**row, **{name: row[column] for name, column in data.columns.items()}})

    return renamed


def _fitted(encode: Encoder, max_seq_len: int) -> RowEncoder:
    def fitted(row: dict[str, Any]) -> tuple[Example, int]:
        ids, labels = encode(row)
        return _fit(ids, labels, max_seq_len), len(ids)

    return fitted


def _encoder(data: DataSection, tokenizer: PreTrainedTokenizerBase) -> Encoder:
    formats: dict[DataFormat, Callable[[], Encoder]] = {
        DataFormat.prompt_completion: lambda: _PromptCompletion(data, tokenizer),
        DataFormat.chat: lambda: _Chat(tokenizer),
        DataFormat.instruction: lambda: _Instruction(_Chat(tokenizer)),
        DataFormat.text: lambda: _Text(tokenizer),
    }
    return formats[data.format]()


def _string(row: dict[str, Any], column: str, required: bool = True) -> str:
    value = row.get(column)
    if value is None and not required:
        return ""
    if not isinstance(value, str) or (required and not value.strip()):
        raise RowError(f"column {column!r} must be a non-empty string")
    return value


class _Instruction:
    """`instruction`, optional `input`, `output`: one user and one assistant turn, so the
    model's chat template is applied and only the output is trained on."""

    def __init__(self, chat: _Chat) -> None:
        self.chat = chat

    def __call__(self, row: dict[str, Any]) -> tuple[list[int], list[int]]:
        instruction, extra = _string(row, "instruction"), _string(row, "input", required=False)
        user = f"{instruction}\n\n{extra}" if extra.strip() else instruction
        return self.chat({"messages": [{"role": "user", "content": user},
                                       {"role": "assistant", "content": _string(row, "output")}]})


class _Text:
    """Plain `text` (continued pre-training on domain prose): every token is trained on."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase) -> None:
        self.tokenizer = tokenizer

    def __call__(self, row: dict[str, Any]) -> tuple[list[int], list[int]]:
        ids = [*self.tokenizer(_string(row, "text"))["input_ids"], self.tokenizer.eos_token_id]
        return ids, list(ids)


class _PromptCompletion:
    """Jinja templates over the row's columns; loss only on the completion and the EOS."""

    def __init__(self, data: DataSection, tokenizer: PreTrainedTokenizerBase) -> None:
        env = SandboxedEnvironment(undefined=StrictUndefined, keep_trailing_newline=True)
        sources = [data.prompt_template or "", data.completion_template or ""]
        self.prompt, self.completion = (env.from_string(s) for s in sources)
        used = (meta.find_undeclared_variables(env.parse(s)) for s in sources)
        self.columns = sorted(set().union(*used))
        self.tokenizer = tokenizer

    def __call__(self, row: dict[str, Any]) -> tuple[list[int], list[int]]:
        for column in self.columns:
            if column not in row:
                raise RowError(f"missing column {column!r}")
            if row[column] is None:
                raise RowError(f"column {column!r} is null")
        prompt, completion = (_rendered(template, row, name) for name, template in (
            ("data.prompt_template", self.prompt), ("data.completion_template", self.completion)))
        if not completion.strip():
            raise RowError("empty completion")
        prompt_ids = self.tokenizer(prompt)["input_ids"]
        completion_ids = self.tokenizer(completion, add_special_tokens=False)["input_ids"]
        completion_ids = [*completion_ids, self.tokenizer.eos_token_id]
        return prompt_ids + completion_ids, [IGNORE_INDEX] * len(prompt_ids) + completion_ids


class _Chat:
    """A `messages` column rendered with the tokenizer's chat template; loss on assistant turns.

    Each assistant turn's tokens are found as the difference between the conversation rendered
    up to that turn and the same rendered up to the generation prompt before it.
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase) -> None:
        if not tokenizer.chat_template:
            raise TokenizerUnfitError("format 'chat' needs a tokenizer with a chat template")
        self.tokenizer = tokenizer

    def _ids(self, messages: list[dict[str, str]], generation_prompt: bool) -> list[int]:
        try:
            text = self.tokenizer.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=generation_prompt
            )
        except RENDER_ERRORS as exc:  # e.g. its raise_exception() on roles out of turn
            raise RowError("the chat template refuses the conversation "
                           f"({type(exc).__name__})") from exc
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def __call__(self, row: dict[str, Any]) -> tuple[list[int], list[int]]:
        messages = row.get("messages")
        if not isinstance(messages, list) or not messages:
            raise RowError("column 'messages' must be a non-empty list")
        for number, message in enumerate(messages, start=1):
            if not (
                isinstance(message, dict)
                and isinstance(message.get("role"), str)
                and isinstance(message.get("content"), str)
            ):
                raise RowError(f"message {number} needs string 'role' and 'content'")
        turns = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
        if not turns or not any(messages[i]["content"].strip() for i in turns):
            raise RowError("no assistant message with content to learn from")
        ids: list[int] = []
        labels: list[int] = []
        for turn in turns:
            prefix = self._ids(messages[:turn], generation_prompt=True)
            full = self._ids(messages[: turn + 1], generation_prompt=False)
            if prefix[: len(ids)] != ids or full[: len(prefix)] != prefix:
                raise RowError("the chat template does not render turns as stable prefixes")
            labels += [IGNORE_INDEX] * (len(prefix) - len(ids)) + full[len(prefix) :]
            ids = full
        return ids, labels


RENDER_ERRORS = (TemplateError, ArithmeticError, LookupError, TypeError, ValueError,
                 RecursionError)
"""How a template can fail on one row's values. Their messages are not shown: they may quote
a value (`{{ teams[label] }}` fails naming the label), and a reason never does."""


def _rendered(template: Template, row: dict[str, Any], name: str) -> str:
    try:
        return template.render(row)
    except RENDER_ERRORS as exc:
        raise RowError(f"template error in {name} ({type(exc).__name__})") from exc


def _fit(ids: list[int], labels: list[int], max_seq_len: int) -> Example:
    first_label = next((i for i, label in enumerate(labels) if label != IGNORE_INDEX), len(ids))
    if first_label >= max_seq_len:
        raise RowError(
            f"the prompt is {first_label} tokens, so max_seq_len {max_seq_len} leaves no room "
            "for the completion"
        )
    return {
        "input_ids": ids[:max_seq_len],
        "attention_mask": [1] * min(len(ids), max_seq_len),
        "labels": labels[:max_seq_len],
    }
