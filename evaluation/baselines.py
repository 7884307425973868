"""What a model that learned nothing would score on the same documents, and how a model's
answers spread over the classes, from lm-eval's per-document outputs.

On an imbalanced test set a model that always answers the commonest label beats a weak base
model by a wide margin; only the majority baseline, per-class recall and macro-F1 show that it
learned the label prior and not the task. The figures are computed on exactly the documents
lm-eval scored, so they share its limit, seed and filters.

The same rows give every document's outcome by `doc_id` (`DocOutcomes`), for the model and for
the constant answer, so the gate can compare them document by document.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable
from typing import Any

from stagefiles.jobspec import ClassStats, DocOutcomes, TaskMetric

CLASS_METRIC = "acc"
"""Class figures describe the argmax answers, which are what `acc` scores."""


def _recall_and_macro_f1(targets: list[str], answers: list[str]
                         ) -> tuple[dict[str, float], float]:
    """Recall of each gold class, and F1 averaged over every class seen as gold or answer
    (scikit-learn's `average="macro"`, `zero_division=0`), computed here because importing
    scikit-learn costs each evaluation process 1.5 to 3 CPU-seconds for a few divisions."""
    gold, said = Counter(targets), Counter(answers)
    hit = Counter(t for t, a in zip(targets, answers, strict=True) if t == a)
    recall = {label: hit[label] / gold[label] for label in sorted(gold)}
    f1 = [2 * hit[label] / (gold[label] + said[label]) for label in gold | said]
    return recall, sum(f1) / len(f1)


def class_stats(rows: Iterable[dict[str, Any]]) -> ClassStats | None:
    """Baselines and class spread of one multiple-choice task; None for other task types.

    A class is the choice's text where every document offers the same choices (labels), and
    the choice's position otherwise (ARC-style questions, where "always the first option" is
    the constant answer).
    """
    kept = [row for row in rows if row.get("filter", "none") == "none"]
    parsed = [_doc(row) for row in kept]
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
    recall, macro_f1 = _recall_and_macro_f1(targets, answers)
    return ClassStats(
        documents=n,
        majority=majority,
        # lm-eval's stderr of a mean: sample standard deviation over sqrt(n).
        majority_stderr=math.sqrt(majority * (1 - majority) / (n - 1)) if n > 1 else 0.0,
        majority_class=majority_class,
        chance=chance,
        macro_f1=macro_f1,
        recall=recall,
        predicted=dict(Counter(answers).most_common()),
        majority_per_doc=_outcomes([row.get("doc_id") for row in kept],
                                   [t == majority_class for t in targets]),
    )


def doc_outcomes(rows: Iterable[dict[str, Any]], metric: str, value: float
                 ) -> DocOutcomes | None:
    """Every document's outcome on `metric` (`name` or `name,filter`, as `extract_metrics`
    names it); None unless each row scores it 0 or 1 and their mean is the reported `value`:
    a metric aggregated otherwise (F1, BLEU) does not split into documents."""
    name, _, filter_name = metric.partition(",")
    doc_ids, right = [], []
    for row in rows:
        if row.get("filter", "none") != (filter_name or "none"):
            continue
        outcome = row.get(name)
        if outcome not in (0, 1):  # True and 1.0 are 1; a tuple (F1's) is neither
            return None
        doc_ids.append(row.get("doc_id"))
        right.append(bool(outcome))
    if not right or abs(sum(right) / len(right) - value) > 1e-6:
        return None
    return _outcomes(doc_ids, right)


def with_sample_figures(metrics: list[TaskMetric],
                        samples: dict[str, list[dict[str, Any]]]) -> list[TaskMetric]:
    """`metrics` with what the per-document rows tell: each 0/1 metric's outcomes by doc_id,
    and each multiple-choice task's `acc` its `ClassStats`."""
    stats = {task: class_stats(rows) for task, rows in samples.items()}
    return [
        m.model_copy(update={
            "per_doc": doc_outcomes(samples.get(m.task, []), m.metric, m.value),
            **({"classes": stats.get(m.task)} if m.metric == CLASS_METRIC else {}),
        })
        for m in metrics
    ]


def _outcomes(doc_ids: list[Any], right: list[bool]) -> DocOutcomes | None:
    """By doc_id; None unless every doc_id is an int, each once, as lm-eval logs them."""
    if (not all(isinstance(d, int) and not isinstance(d, bool) for d in doc_ids)
            or len(set(doc_ids)) != len(doc_ids)):
        return None
    pairs = sorted(zip(doc_ids, right, strict=True))
    return DocOutcomes(right=[d for d, r in pairs if r], wrong=[d for d, r in pairs if not r])


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
