"""What a model that learned nothing would score on the same documents, and how a model's
answers spread over the classes, from lm-eval's per-document outputs.

On an imbalanced test set a model that always answers the commonest label beats a weak base
model by a wide margin; only the majority baseline, per-class recall and macro-F1 show that it
learned the label prior and not the task. The figures are computed on exactly the documents
lm-eval scored, so they share its limit, seed and filters.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable
from typing import Any

from sklearn.metrics import f1_score, recall_score

from events.jobspec import ClassStats, TaskMetric

CLASS_METRIC = "acc"
"""Class figures describe the argmax answers, which are what `acc` scores."""


def class_stats(rows: Iterable[dict[str, Any]]) -> ClassStats | None:
    """Baselines and class spread of one multiple-choice task; None for other task types.

    A class is the choice's text where every document offers the same choices (labels), and
    the choice's position otherwise (ARC-style questions, where "always the first option" is
    the constant answer).
    """
    parsed = [_doc(row) for row in rows if row.get("filter", "none") == "none"]
    docs = [d for d in parsed if d is not None]
    if not docs or len(docs) < len(parsed):
        return None
    fixed = len({tuple(choices) for choices, _, _ in docs}) == 1
    targets, answers = [], []
    for choices, target, answer in docs:
        targets.append(choices[target] if fixed else f"option {target + 1}")
        answers.append(choices[answer] if fixed else f"option {answer + 1}")
    n = len(docs)
    chance = sum(1 / len(choices) for choices, _, _ in docs) / n
    majority_class, count = Counter(targets).most_common(1)[0]
    majority = count / n
    labels = sorted(set(targets))
    recall = recall_score(targets, answers, labels=labels, average=None, zero_division=0)
    return ClassStats(
        documents=n,
        majority=majority,
        # lm-eval's stderr of a mean: sample standard deviation over sqrt(n).
        majority_stderr=math.sqrt(majority * (1 - majority) / (n - 1)) if n > 1 else 0.0,
        majority_class=majority_class,
        chance=chance,
        macro_f1=float(f1_score(targets, answers, labels=sorted(set(targets) | set(answers)),
                                average="macro", zero_division=0)),
        recall={label: float(r) for label, r in zip(labels, recall, strict=True)},
        predicted=dict(Counter(answers).most_common()),
    )


def with_class_stats(metrics: list[TaskMetric],
                     samples: dict[str, list[dict[str, Any]]]) -> list[TaskMetric]:
    """`metrics` with each multiple-choice task's `acc` carrying its `ClassStats`."""
    stats = {task: class_stats(rows) for task, rows in samples.items()}
    return [
        m.model_copy(update={"classes": stats.get(m.task)}) if m.metric == CLASS_METRIC else m
        for m in metrics
    ]


def _doc(row: dict[str, Any]) -> tuple[list[str], int, int] | None:
    """(choices, target index, argmax index) of a multiple-choice sample row, else None."""
    target, arguments = row.get("target"), row.get("arguments")
    responses = row.get("filtered_resps")
    if isinstance(target, str) and target.isdigit():
        target = int(target)
    if (not isinstance(target, int) or not isinstance(arguments, list)
            or not isinstance(responses, list) or len(arguments) != len(responses)
            or len(arguments) < 2):
        return None
    try:
        choices = [str(args[1]).strip() for args in arguments]
        lls = [float(resp[0]) for resp in responses]
    except (IndexError, TypeError, ValueError):
        return None
    if not 0 <= target < len(choices):
        return None
    return choices, target, max(range(len(lls)), key=lls.__getitem__)
