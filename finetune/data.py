"""Training rows -> token ids with the loss masked to what the model should learn to write.

Every row is checked before any training starts: a typo in row 7,000 must fail the job in
seconds with its line number, not after an hour of GPU time, and never be trained on silently.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jinja2 import StrictUndefined, TemplateError, meta
from jinja2.sandbox import SandboxedEnvironment
from transformers import DataCollatorForSeq2Seq, PreTrainedTokenizerBase

from events.recipe import DataFormat, DataSection

IGNORE_INDEX = -100
_SHOWN_PROBLEMS = 20

Example = dict[str, list[int]]
Encoder = Callable[[dict[str, Any]], tuple[list[int], list[int]]]


class DataValidationError(ValueError):
    """Rows of the training file are unusable; `.problems` names each one by line or row."""

    def __init__(self, source: Path, problems: list[str], rows: int) -> None:
        self.problems = problems
        listed = "\n  ".join(problems[:_SHOWN_PROBLEMS])
        more = len(problems) - _SHOWN_PROBLEMS
        tail = f"\n  ... and {more} more" if more > 0 else ""
        head = f"{source}: {len(problems)} problem(s) in {rows} row(s) read"
        super().__init__(f"{head}:\n  {listed}{tail}")


class _RowError(Exception):
    """One row is unusable; the message says why."""


@dataclass(frozen=True)
class TokenizedData:
    examples: list[Example]
    truncated: int = 0
    skipped: list[str] = field(default_factory=list)


def load_examples(
    data: DataSection,
    tokenizer: PreTrainedTokenizerBase,
    max_seq_len: int,
    max_bad_fraction: float = 0.0,
) -> TokenizedData:
    """Read, validate and tokenise `data.train_file`; raise DataValidationError on bad rows.

    Up to `max_bad_fraction` of the rows may be bad; they are then skipped and listed.
    """
    source = Path(data.train_file)
    if tokenizer.eos_token_id is None:
        raise ValueError("the tokenizer has no EOS token, so the model could not learn to stop")
    encode = _encoder(data, tokenizer)
    examples: list[Example] = []
    problems: list[str] = []
    truncated = rows = 0
    for where, row in _read_rows(source):
        rows += 1
        try:
            if isinstance(row, _RowError):
                raise row
            if not isinstance(row, dict):
                raise _RowError(f"expected an object with columns, got {type(row).__name__}")
            ids, labels = encode(row)
            example, was_truncated = _fit(ids, labels, max_seq_len)
        except _RowError as exc:
            problems.append(f"{where}: {exc}")
            continue
        examples.append(example)
        truncated += was_truncated
    if rows == 0:
        raise DataValidationError(source, ["the file has no rows"], 0)
    if problems and (len(problems) > max_bad_fraction * rows or not examples):
        raise DataValidationError(source, problems, rows)
    return TokenizedData(examples, truncated, problems)


def collator(tokenizer: PreTrainedTokenizerBase) -> DataCollatorForSeq2Seq:
    """Pad each batch to its longest row; padding never carries loss."""
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return DataCollatorForSeq2Seq(tokenizer, padding="longest", label_pad_token_id=IGNORE_INDEX)


def _read_rows(source: Path) -> Iterator[tuple[str, Any]]:
    """Yield (where, row); a line that is not JSON comes back as a _RowError, to be listed."""
    if not source.is_file():
        raise DataValidationError(source, ["no such file"], 0)
    suffix = source.suffix.lower()
    if suffix == ".jsonl":
        with open(source, encoding="utf-8") as fh:
            for number, line in enumerate(fh, start=1):
                if not line.strip():
                    continue
                try:
                    yield f"line {number}", json.loads(line)
                except json.JSONDecodeError as exc:
                    yield f"line {number}", _RowError(f"invalid JSON: {exc.msg}")
    elif suffix == ".csv":
        with open(source, encoding="utf-8", newline="") as fh:
            reader = csv.DictReader(fh)
            for row in reader:
                yield f"line {reader.line_num}", row
    elif suffix == ".parquet":
        import pyarrow.parquet as pq

        for number, row in enumerate(pq.read_table(source).to_pylist(), start=1):
            yield f"row {number}", row
    else:
        problem = f"unsupported file type {suffix!r}; use .jsonl, .csv or .parquet"
        raise DataValidationError(source, [problem], 0)


def _encoder(data: DataSection, tokenizer: PreTrainedTokenizerBase) -> Encoder:
    formats: dict[DataFormat, Callable[[], Encoder]] = {
        DataFormat.prompt_completion: lambda: _PromptCompletion(data, tokenizer),
        DataFormat.chat: lambda: _Chat(tokenizer),
        DataFormat.instruction: lambda: _Instruction(_Chat(tokenizer)),
        DataFormat.text: lambda: _Text(tokenizer),
    }
    encode = formats[data.format]()
    if not data.columns:
        return encode

    def renamed(row: dict[str, Any]) -> tuple[list[int], list[int]]:
        for name, column in data.columns.items():
            if column not in row:
                raise _RowError(f"missing column {column!r} (mapped to {name!r})")
        return encode({**row, **{name: row[column] for name, column in data.columns.items()}})

    return renamed


def _string(row: dict[str, Any], column: str, required: bool = True) -> str:
    value = row.get(column)
    if value is None and not required:
        return ""
    if not isinstance(value, str) or (required and not value.strip()):
        raise _RowError(f"column {column!r} must be a non-empty string")
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
                raise _RowError(f"missing column {column!r}")
            if row[column] is None:
                raise _RowError(f"column {column!r} is null")
        try:
            prompt, completion = self.prompt.render(row), self.completion.render(row)
        except TemplateError as exc:
            raise _RowError(f"template error: {exc}") from exc
        if not completion.strip():
            raise _RowError("empty completion")
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
            raise ValueError("format 'chat' needs a tokenizer with a chat template")
        self.tokenizer = tokenizer

    def _ids(self, messages: list[dict[str, str]], generation_prompt: bool) -> list[int]:
        text = self.tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=generation_prompt
        )
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def __call__(self, row: dict[str, Any]) -> tuple[list[int], list[int]]:
        messages = row.get("messages")
        if not isinstance(messages, list) or not messages:
            raise _RowError("column 'messages' must be a non-empty list")
        for number, message in enumerate(messages, start=1):
            if not (
                isinstance(message, dict)
                and isinstance(message.get("role"), str)
                and isinstance(message.get("content"), str)
            ):
                raise _RowError(f"message {number} needs string 'role' and 'content'")
        turns = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
        if not turns or not any(messages[i]["content"].strip() for i in turns):
            raise _RowError("no assistant message with content to learn from")
        ids: list[int] = []
        labels: list[int] = []
        for turn in turns:
            prefix = self._ids(messages[:turn], generation_prompt=True)
            full = self._ids(messages[: turn + 1], generation_prompt=False)
            if prefix[: len(ids)] != ids or full[: len(prefix)] != prefix:
                raise _RowError("the chat template does not render turns as stable prefixes")
            labels += [IGNORE_INDEX] * (len(prefix) - len(ids)) + full[len(prefix) :]
            ids = full
        return ids, labels


def _fit(ids: list[int], labels: list[int], max_seq_len: int) -> tuple[Example, bool]:
    first_label = next((i for i, label in enumerate(labels) if label != IGNORE_INDEX), len(ids))
    if first_label >= max_seq_len:
        raise _RowError(
            f"the prompt is {first_label} tokens, so max_seq_len {max_seq_len} leaves no room "
            "for the completion"
        )
    example = {
        "input_ids": ids[:max_seq_len],
        "attention_mask": [1] * min(len(ids), max_seq_len),
        "labels": labels[:max_seq_len],
    }
    return example, len(ids) > max_seq_len
