"""The German media and public-sector recipes over real GermEval 2018 comments and real
tenancy-law sentences (optional).

Each real file is turned into the column layout the recipe's templates read (GermEval's hub
copy `jfrei/GermEval18`; the sebis corpus's own `Funktion;Text`), then fed through the
recipe's own task YAML and training-row checks.
"""

from __future__ import annotations

import csv
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

from recipes import load_recipe

GERMEVAL_TRAIN = "media/germeval2018.training.txt"
GERMEVAL_TEST = "media/germeval2018.test.txt"
TENANCY_LAW = "public_sector/mietrecht_sentences_9_classes.csv"
# The hub's class labels, in the order of their int values.
COARSE = ["OTHER", "OFFENSE"]
FINE = ["OTHER", "ABUSE", "INSULT", "PROFANITY"]
# The four of the corpus's nine functions that the recipe teaches, in its choice order.
FUNCTIONS = ["Permission", "Duty", "Consequence", "Objection"]


def germeval_hub_row(line: str) -> dict[str, Any]:
    """A line of the official TSV (text, coarse, fine; no header) as `jfrei/GermEval18` has
    it: both labels as class-label ints. "|LBR|" line-break markers stay, as in the files."""
    text, coarse, fine = line.split("\t")
    return {"text": text, "coarse": COARSE.index(coarse), "fine": FINE.index(fine)}


def _germeval(path: Path) -> list[dict[str, Any]]:
    return [germeval_hub_row(line) for line in path.read_text(encoding="utf-8").splitlines()]


def _tenancy_sentences(path: Path) -> list[dict[str, str]]:
    """The corpus's rows whose function the recipe teaches (480 of 601); the others
    (Reference, Continuation, Prohibition, Definition, Indemnity) are left out."""
    with path.open(encoding="utf-8-sig", newline="") as fh:
        rows = list(csv.DictReader(fh, delimiter=";"))
    return [row for row in rows if row["Funktion"] in FUNCTIONS]


def test_germeval_test_split_renders_with_its_labels(
    real_file: Callable[[str], Path], task_over_rows: Callable[..., Any], tmp_path: Path
) -> None:
    rows = _germeval(real_file(GERMEVAL_TEST))
    docs = task_over_rows(load_recipe("comment-moderation-de"), "comment_moderation_de", rows,
                          tmp_path)
    assert len(docs) == 3532
    assert [doc.target for doc in docs] == [row["coarse"] for row in rows]
    assert all(doc.choices == COARSE and doc.text.endswith("\nUrteil:") for doc in docs)


def test_germeval_training_rows_fit_max_seq_len(
    real_file: Callable[[str], Path], training_rows: Callable[..., Any], tokenizer: Any,
    tmp_path: Path,
) -> None:
    """A fixed sample of 300 plus the 20 longest tweets (emoji and @-chains tokenise long)."""
    rows = _germeval(real_file(GERMEVAL_TRAIN))
    longest = sorted(rows, key=lambda row: len(row["text"].encode()))[-20:]
    sample = random.Random(0).sample(rows, 300) + longest
    data = training_rows(load_recipe("comment-moderation-de"), sample, tmp_path, tokenizer)
    assert len(data.train.examples) == len(sample) and not data.train.skipped


def test_tenancy_sentences_render_with_their_functions(
    real_file: Callable[[str], Path], task_over_rows: Callable[..., Any], tmp_path: Path
) -> None:
    rows = _tenancy_sentences(real_file(TENANCY_LAW))
    docs = task_over_rows(load_recipe("tenancy-law-sentence-function-de"),
                          "tenancy_law_sentence_function_de", rows, tmp_path)
    assert len(docs) == 480
    assert [doc.choices[doc.target] for doc in docs] == [row["Funktion"] for row in rows]
    assert all(doc.choices == FUNCTIONS for doc in docs)


def test_tenancy_training_rows_fit_max_seq_len(
    real_file: Callable[[str], Path], training_rows: Callable[..., Any], tokenizer: Any,
    tmp_path: Path,
) -> None:
    """Every sentence of the four functions: the longest (over 1000 characters) must fit."""
    rows = _tenancy_sentences(real_file(TENANCY_LAW))
    data = training_rows(load_recipe("tenancy-law-sentence-function-de"), rows, tmp_path,
                         tokenizer)
    assert len(data.train.examples) == len(rows) and not data.train.skipped
