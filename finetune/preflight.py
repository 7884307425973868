"""Pre-flight report: what training would see, before any GPU time is spent.

It reads the data through the same code as training (`finetune.data.read_examples`), so row
counts, token counts, truncation and the rendered examples are those of the real run. The
orchestrator stores it with the job and rejects the job when the data is unusable; `aif
preflight` prints it without submitting anything.

Overlap with the evaluation data: a training row overlaps when any of its string values
(nested ones included, e.g. chat message contents) of at least `MIN_OVERLAP_CHARS`
characters equals a string value of a document in one of the recipe's task data files
(local JSONL), both lowercased with whitespace collapsed. Short values such as labels are
ignored, so that shared class names do not count as leaks.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Self

from pydantic import BaseModel, ConfigDict
from transformers import PreTrainedTokenizerBase

from evaluation.tasks import local_data_files
from events.recipe import EvalSection, Recipe
from finetune.data import IGNORE_INDEX, DataValidationError, Example, Split, read_examples

PREFLIGHT = "preflight.json"
MIN_OVERLAP_CHARS = 20
SHOWN_EXAMPLES = 3
SHOWN_ROWS = 20  # bad rows listed in full; duplicates and overlaps by line
NO_LOSS = ("[no loss]", "[/no loss]")


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RenderedExample(_Frozen):
    where: str
    text: str  # the decoded input ids; tokens without loss inside NO_LOSS markers
    truncated: bool


class SplitReport(_Frozen):
    source: str
    rows_read: int
    rows_usable: int
    bad_rows: int
    bad_row_reasons: list[str]
    tokens: int  # of the whole rendered examples, before truncation
    mean_tokens: float
    max_tokens: int
    trained_tokens: int  # carrying loss, after truncation
    truncated: int
    examples: list[RenderedExample]
    duplicates: int
    duplicate_rows: list[str]
    eval_overlap: int
    eval_overlap_rows: list[str]


class PreflightReport(_Frozen):
    recipe: str
    base_model: str
    max_seq_len: int
    max_bad_fraction: float
    train: SplitReport
    validation: SplitReport | None
    usable: bool
    reason: str = ""

    def write(self, path: Path) -> None:
        path.write_text(self.model_dump_json(indent=2))

    @classmethod
    def read(cls, path: Path) -> Self:
        return cls.model_validate_json(path.read_text())

    def summary(self) -> str:
        """One line for status events and `aif submit --wait`."""
        t = self.train
        line = (f"pre-flight: {t.rows_usable}/{t.rows_read} training rows usable, {t.tokens} "
                f"tokens, {t.truncated} truncated, {t.duplicates} duplicates, "
                f"{t.eval_overlap} overlapping evaluation data")
        if self.validation is not None:
            line += f"; {self.validation.rows_usable} validation rows"
        return line

    def to_text(self) -> str:
        """The whole report for people, in plain lines."""
        lines = [f"Pre-flight report for recipe {self.recipe} (base model {self.base_model}, "
                 f"max_seq_len {self.max_seq_len}, max_bad_fraction {self.max_bad_fraction:g})"]
        for name, split in (("train", self.train), ("validation", self.validation)):
            if split is not None:
                lines += _split_lines(name, split)
        lines.append("verdict: usable" if self.usable else f"verdict: REJECTED\n{self.reason}")
        return "\n".join(lines)


def build_report(recipe: Recipe, tokenizer: PreTrainedTokenizerBase) -> PreflightReport:
    """Read both splits as training would and describe them; DataValidationError only when
    a source cannot be read at all (missing file, unreachable hub dataset)."""
    data = read_examples(recipe.data, tokenizer, recipe.train.max_seq_len, recipe.train.seed)
    eval_strings = _eval_strings(recipe.eval)
    reasons = []
    for split in (data.train, data.validation):
        try:
            if split is not None:
                split.check(recipe.data.max_bad_fraction)
        except DataValidationError as exc:
            reasons.append(str(exc))
    return PreflightReport(
        recipe=recipe.name,
        base_model=recipe.model.base,
        max_seq_len=recipe.train.max_seq_len,
        max_bad_fraction=recipe.data.max_bad_fraction,
        train=_split_report(data.train, tokenizer, eval_strings),
        validation=data.validation and _split_report(data.validation, tokenizer, eval_strings),
        usable=not reasons,
        reason="\n".join(reasons),
    )


def render(example: Example, tokenizer: PreTrainedTokenizerBase) -> str:
    """Decode the example's tokens, wrapping each run without loss in the NO_LOSS markers."""
    pairs = zip(example["input_ids"], example["labels"], strict=True)
    parts = []
    for trained, run in itertools.groupby(pairs, key=lambda p: p[1] != IGNORE_INDEX):
        text = tokenizer.decode([token for token, _ in run])
        parts.append(text if trained else f"{NO_LOSS[0]}{text}{NO_LOSS[1]}")
    return "".join(parts)


def _split_report(split: Split, tokenizer: PreTrainedTokenizerBase,
                  eval_strings: set[str]) -> SplitReport:
    lengths = [e.length for e in split.encoded]
    first_seen: dict[tuple[tuple[int, ...], tuple[int, ...]], str] = {}
    duplicates = []
    for e in split.encoded:
        key = (tuple(e.example["input_ids"]), tuple(e.example["labels"]))
        if key in first_seen:
            duplicates.append(f"{e.where} = {first_seen[key]}")
        first_seen.setdefault(key, e.where)
    overlap = [e.where for e in split.encoded if not eval_strings.isdisjoint(_strings(e.row))]
    return SplitReport(
        source=split.source,
        rows_read=split.rows,
        rows_usable=len(split.encoded),
        bad_rows=len(split.skipped),
        bad_row_reasons=split.skipped[:SHOWN_ROWS],
        tokens=sum(lengths),
        mean_tokens=sum(lengths) / len(lengths) if lengths else 0.0,
        max_tokens=max(lengths, default=0),
        trained_tokens=sum(label != IGNORE_INDEX for e in split.encoded
                           for label in e.example["labels"]),
        truncated=split.truncated,
        examples=[RenderedExample(where=e.where, text=render(e.example, tokenizer),
                                  truncated=e.truncated)
                  for e in split.encoded[:SHOWN_EXAMPLES]],
        duplicates=len(duplicates),
        duplicate_rows=duplicates[:SHOWN_ROWS],
        eval_overlap=len(overlap),
        eval_overlap_rows=overlap[:SHOWN_ROWS],
    )


def _eval_strings(section: EvalSection) -> set[str]:
    """Normalised long string values of every document in the recipe's task data files."""
    found: set[str] = set()
    for task in section.tasks:
        if task.yaml is None:  # built-in lm-eval task: its data is on the hub, not here
            continue
        for path in local_data_files(Path(task.yaml), task.name):
            if path.suffix == ".jsonl":
                with path.open(encoding="utf-8") as fh:
                    found.update(s for line in fh if line.strip() for s in _strings(
                        json.loads(line)))
    return found


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        text = " ".join(value.lower().split())
        if len(text) >= MIN_OVERLAP_CHARS:
            yield text
    elif isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)


def _split_lines(name: str, s: SplitReport) -> list[str]:
    lines = [
        f"{name}: {s.source}",
        f"  rows: {s.rows_read} read, {s.rows_usable} usable, {s.bad_rows} bad",
        f"  tokens: {s.tokens} total, {s.mean_tokens:.1f} mean, {s.max_tokens} max, "
        f"{s.trained_tokens} trained on; {s.truncated} truncated at max_seq_len",
        f"  duplicates: {s.duplicates}" + _listed(s.duplicate_rows, s.duplicates),
        f"  overlap with evaluation data: {s.eval_overlap}"
        + _listed(s.eval_overlap_rows, s.eval_overlap),
    ]
    lines += [f"  bad {reason}" for reason in s.bad_row_reasons]
    if s.bad_rows > len(s.bad_row_reasons):
        lines.append(f"  ... and {s.bad_rows - len(s.bad_row_reasons)} more bad rows")
    for example in s.examples:
        cut = ", truncated" if example.truncated else ""
        lines.append(f"  example ({example.where}{cut}):")
        lines += [f"    | {line}" for line in example.text.split("\n")]
    return lines


def _listed(shown: list[str], count: int) -> str:
    if not shown:
        return ""
    more = f", ... {count - len(shown)} more" if count > len(shown) else ""
    return f" ({', '.join(shown)}{more})"
