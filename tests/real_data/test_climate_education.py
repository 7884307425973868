"""The climate and education recipes on the real ClimateX and ARC-Easy files.

Each real row is brought into the hub data set's column layout (the layout the recipe's
generated files imitate), then rendered by the recipe's lm-eval task and tokenised as its
training data.
"""

from __future__ import annotations

import csv
import json
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

from recipes import load_recipe

CONFIDENCE = ["low", "medium", "high", "very high"]
CLIMATEX_INTS = ("statement_idx", "page_num", "sent_num", "score")
TRAIN_SAMPLE = 300


def climatex_rows(path: Path) -> list[dict[str, Any]]:
    """The TSV's rows as the hub serves them: the number columns as ints, not strings."""
    with path.open(encoding="utf-8", newline="") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))
    return [{**row, **{column: int(row[column]) for column in CLIMATEX_INTS}} for row in rows]


def sample(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A fixed sample of training rows, so a failure names the same row every run."""
    return random.Random(0).sample(rows, min(TRAIN_SAMPLE, len(rows)))


def test_ipcc_confidence_rating_on_climatex(
    real_file: Callable[[str], Path], task_over_rows: Callable[..., list],
    training_rows: Callable[..., Any], tokenizer: Any, tmp_path: Path,
) -> None:
    recipe = load_recipe("ipcc-confidence-rating")
    rows = climatex_rows(real_file("climate/climatex_ipcc_statements_dataset.tsv"))
    test = [row for row in rows if row["split"] == "test"]
    assert len(test) == 300
    docs = task_over_rows(recipe, "ipcc_confidence_rating", test, tmp_path)
    for row, doc in zip(test, docs, strict=True):
        assert doc.choices == CONFIDENCE
        assert doc.target == CONFIDENCE.index(row["confidence"]) == row["score"]
    train = sample([row for row in rows if row["split"] == "train"])
    training_rows(recipe, train, tmp_path, tokenizer)  # raises, naming the line, on a bad row


def test_science_curriculum_quiz_on_arc_easy(
    real_file: Callable[[str], Path], task_over_rows: Callable[..., list],
    training_rows: Callable[..., Any], tokenizer: Any, tmp_path: Path,
) -> None:
    recipe = load_recipe("science-curriculum-quiz")
    # The mirror is a dump of the hub rows: already in the hub layout.
    test = json.loads(real_file("education/arc_easy_test.json").read_text(encoding="utf-8"))
    docs = task_over_rows(recipe, "science_curriculum_quiz", test, tmp_path)
    for row, doc in zip(test, docs, strict=True):
        assert doc.choices == row["choices"]["text"]
        assert row["choices"]["label"][doc.target] == row["answerKey"]
        assert doc.text.startswith(f"Question: {row['question']}\n")
    assert {len(doc.choices) for doc in docs} == {3, 4, 5}
    train = sample(json.loads(real_file("education/arc_easy_train.json").read_text("utf-8")))
    training_rows(recipe, train, tmp_path, tokenizer)  # raises, naming the line, on a bad row
