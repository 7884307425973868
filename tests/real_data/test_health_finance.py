"""The health and finance recipes over the real PubMedQA and financial-tweet data (optional).

Each real file is turned into its hub data set's column layout (the layout the recipe names in
`data.dataset`), then fed through the recipe's own task YAML and training-row checks.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from recipes import load_recipe

PUBMEDQA = "health/pubmedqa_ori_pqal.json"
PUBMEDQA_TEST = "health/pubmedqa_test_ground_truth.json"
TWEETS_TRAIN = "finance/twitter_financial_news_sentiment_train.csv"
TWEETS_VALID = "finance/twitter_financial_news_sentiment_valid.csv"
TWEET_LABELS = ["bearish", "bullish", "neutral"]


def pubmedqa_hub_row(pmid: str, item: dict[str, Any]) -> dict[str, Any]:
    """A row of the GitHub release (keyed by PMID, upper-case fields) as `qiaojin/PubMedQA`
    `pqa_labeled` has it: int pubid and the abstract nested under `context`."""
    return {
        "pubid": int(pmid),
        "question": item["QUESTION"],
        "context": {"contexts": item["CONTEXTS"], "labels": item["LABELS"],
                    "meshes": item["MESHES"]},
        "long_answer": item["LONG_ANSWER"],
        "final_decision": item["final_decision"],
    }


def tweet_hub_row(row: dict[str, str]) -> dict[str, Any]:
    """A CSV row as the hub has it: the label is an int, not the CSV's string."""
    return {"text": row["text"], "label": int(row["label"])}


def _pubmedqa(real_file: Callable[[str], Path]) -> tuple[dict[str, Any], dict[str, str]]:
    items = json.loads(real_file(PUBMEDQA).read_text())
    return items, json.loads(real_file(PUBMEDQA_TEST).read_text())


def _tweets(path: Path) -> list[dict[str, Any]]:
    with path.open(encoding="utf-8", newline="") as fh:
        return [tweet_hub_row(row) for row in csv.DictReader(fh)]


def test_pubmedqa_test_split_renders_with_its_answers(
    real_file: Callable[[str], Path], task_over_rows: Callable[..., Any], tmp_path: Path
) -> None:
    items, truth = _pubmedqa(real_file)
    rows = [pubmedqa_hub_row(pmid, items[pmid]) for pmid in truth]
    docs = task_over_rows(load_recipe("clinical-evidence-qa"), "clinical_evidence_qa", rows,
                          tmp_path)
    assert [doc.choices[doc.target] for doc in docs] == list(truth.values())
    assert all(doc.text.endswith("\nAnswer:") for doc in docs)


def test_pubmedqa_training_rows_fit_max_seq_len(
    real_file: Callable[[str], Path], training_rows: Callable[..., Any], tokenizer: Any,
    tmp_path: Path,
) -> None:
    """All 500 rows outside the test split: the longest abstracts must fit too."""
    items, truth = _pubmedqa(real_file)
    rows = [pubmedqa_hub_row(pmid, item) for pmid, item in items.items() if pmid not in truth]
    data = training_rows(load_recipe("clinical-evidence-qa"), rows, tmp_path, tokenizer)
    assert len(data.train.examples) == len(rows) == 500 and not data.train.skipped


def test_tweet_validation_split_renders_with_its_labels(
    real_file: Callable[[str], Path], task_over_rows: Callable[..., Any], tmp_path: Path
) -> None:
    rows = _tweets(real_file(TWEETS_VALID))
    docs = task_over_rows(load_recipe("market-news-sentiment"), "market_news_sentiment", rows,
                          tmp_path)
    assert [doc.target for doc in docs] == [row["label"] for row in rows]
    assert all(doc.choices == TWEET_LABELS for doc in docs)


def test_tweet_training_rows_fit_max_seq_len(
    real_file: Callable[[str], Path], training_rows: Callable[..., Any], tokenizer: Any,
    tmp_path: Path,
) -> None:
    """Every row of the train split (short texts, a few seconds): the longest must fit too."""
    rows = _tweets(real_file(TWEETS_TRAIN))
    data = training_rows(load_recipe("market-news-sentiment"), rows, tmp_path, tokenizer)
    assert len(data.train.examples) == len(rows) and not data.train.skipped
