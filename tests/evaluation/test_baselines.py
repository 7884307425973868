"""Majority and chance baselines, per-class recall and macro-F1 from lm-eval's per-document
rows; and a constant-answer model, built on every shipped recipe's real test documents, that
no recipe's gate lets through."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from sklearn.metrics import f1_score, recall_score

from aif.orchestrator.gate import decide
from evaluation.baselines import (
    _recall_and_macro_f1,
    class_stats,
    doc_outcomes,
    with_sample_figures,
)
from evaluation.tasks import materialise_tasks
from events.recipe import Recipe
from recipes import load_recipe, recipe_files
from stagefiles.jobspec import ClassStats, DocOutcomes, EvaluationResult, TaskMetric

LABELS = ["bearish", "bullish", "neutral"]


def _row(target: int, answer: int, choices: list[str] = LABELS, doc_id: int = 0
         ) -> dict[str, Any]:
    """A multiple-choice sample row as lm-eval logs it (after its JSON round trip)."""
    return {
        "doc_id": doc_id, "target": target, "filter": "none",
        "arguments": [["News: ...\nSentiment:", f" {c}"] for c in choices],
        "filtered_resps": [[0.0 if i == answer else -5.0, False] for i in range(len(choices))],
        "metrics": ["acc"], "acc": float(target == answer),
    }


def _rows(pairs: list[tuple[int, int]], doc_ids: list[int]) -> list[dict[str, Any]]:
    return [_row(t, a, doc_id=d) for (t, a), d in zip(pairs, doc_ids, strict=True)]


def test_constant_answer_on_a_skewed_set() -> None:
    rows = [_row(2, 2)] * 6 + [_row(0, 2)] * 3 + [_row(1, 2)]
    stats = class_stats(rows)
    assert stats is not None
    assert (stats.documents, stats.majority, stats.majority_class) == (10, 0.6, "neutral")
    assert stats.chance == pytest.approx(1 / 3)
    assert stats.majority_stderr == pytest.approx((0.6 * 0.4 / 9) ** 0.5)
    assert stats.recall == {"bearish": 0.0, "bullish": 0.0, "neutral": 1.0}
    assert stats.predicted == {"neutral": 10}
    assert stats.macro_f1 == pytest.approx((2 * 0.6 / 1.6) / 3)  # F1 0.75 for neutral only


def test_perfect_answers_give_macro_f1_one() -> None:
    stats = class_stats([_row(t, t) for t in (0, 1, 2, 2)])
    assert stats is not None and stats.macro_f1 == 1.0
    assert stats.recall == dict.fromkeys(LABELS, 1.0)


def test_questions_with_their_own_choices_are_classed_by_position() -> None:
    rows = [_row(0, 0, ["a cat", "a dog"]), _row(1, 0, ["red", "blue"]),
            _row(1, 1, ["up", "down", "left"])]
    stats = class_stats(rows)
    assert stats is not None
    assert stats.predicted == {"option 1": 2, "option 2": 1}
    assert stats.majority_class == "option 2"
    assert stats.chance == pytest.approx((0.5 + 0.5 + 1 / 3) / 3)


@pytest.mark.parametrize("rows", [
    [],
    [{"target": "a free-form answer", "filter": "none", "arguments": [["q", "a"]],
      "filtered_resps": [["a"]]}],  # generate_until
    [_row(0, 0), {**_row(0, 0), "target": 7}],  # a target outside the choices
])
def test_not_multiple_choice_gives_none(rows: list[dict[str, Any]]) -> None:
    assert class_stats(rows) is None


def test_only_acc_carries_the_class_figures_and_0_1_metrics_their_outcomes() -> None:
    metrics = [TaskMetric(task=t, metric=m, value=0.5, stderr=0.1, num_fewshot=0, samples=2)
               for t, m in (("a", "acc"), ("a", "acc_norm"), ("a", "f1"), ("b", "acc"))]
    rows = [{**_row(0, 0, doc_id=4), "acc_norm": 0.0, "f1": [0, 0]},
            {**_row(1, 2, doc_id=9), "acc_norm": 1.0, "f1": [1, 2]}]
    out = with_sample_figures(metrics, {"a": rows})
    assert [m.classes is not None for m in out] == [True, False, False, False]
    assert [m.per_doc for m in out] == [DocOutcomes(right=[4], wrong=[9]),
                                        DocOutcomes(right=[9], wrong=[4]), None, None]


def test_outcomes_are_keyed_by_doc_id_in_any_order() -> None:
    pairs = [(0, 0), (1, 2), (2, 2), (0, 1)]
    in_order = doc_outcomes(_rows(pairs, [0, 1, 2, 3]), "acc", 0.5)
    shuffled = doc_outcomes(_rows(pairs[::-1], [3, 2, 1, 0]), "acc", 0.5)
    assert in_order == shuffled == DocOutcomes(right=[0, 2], wrong=[1, 3])


def test_outcomes_follow_the_metrics_filter() -> None:
    rows = [{"doc_id": 0, "filter": "strict-match", "exact_match": 1.0},
            {"doc_id": 0, "filter": "flexible-extract", "exact_match": 0.0},
            {"doc_id": 1, "filter": "strict-match", "exact_match": 0.0},
            {"doc_id": 1, "filter": "flexible-extract", "exact_match": 0.0}]
    assert doc_outcomes(rows, "exact_match,strict-match", 0.5) == DocOutcomes(
        right=[0], wrong=[1])
    assert doc_outcomes(rows, "exact_match,flexible-extract", 0.0) == DocOutcomes(
        right=[], wrong=[0, 1])


@pytest.mark.parametrize(("rows", "value"), [
    (_rows([(0, 0), (1, 1)], [0, 1]), 0.5),  # not the mean of the rows: aggregated otherwise
    (_rows([(0, 0), (1, 2)], [3, 3]), 0.5),  # a doc_id twice
    ([{**_row(0, 0, doc_id=1), "acc": 0.5}], 0.5),  # neither 0 nor 1
    ([{k: v for k, v in _row(0, 0).items() if k != "doc_id"}], 1.0),
    ([], 0.0),
])
def test_outcomes_that_cannot_be_paired_give_none(rows: list[dict[str, Any]],
                                                  value: float) -> None:
    assert doc_outcomes(rows, "acc", value) is None


def test_the_constant_answer_is_right_where_the_target_is_the_majority_class() -> None:
    stats = class_stats(_rows([(2, 0), (0, 0), (2, 1), (1, 1), (2, 2)], [10, 11, 12, 13, 14]))
    assert stats is not None and stats.majority_class == "neutral"
    assert stats.majority_per_doc == DocOutcomes(right=[10, 12, 14], wrong=[11, 13])
    repeated = class_stats([_row(2, 0), _row(0, 0)])  # every doc_id 0: no pairs
    assert repeated is not None and repeated.majority_per_doc is None


def _test_docs(recipe: Recipe, tmp_path: Path) -> list[dict[str, Any]]:
    """The gate task's real documents, read by lm-eval from the recipe's own task YAML, as
    rows of a model that answers each target right (to learn the classes)."""
    from lm_eval.tasks import TaskManager, get_task_dict

    tasks = materialise_tasks(recipe.eval, tmp_path)
    manager = TaskManager(include_path=str(tasks.include_dir), include_defaults=False)
    task = get_task_dict([recipe.gate.task], manager)[recipe.gate.task]
    docs = list(task.test_docs() if task.has_test_docs() else task.validation_docs())
    return [{"choices": task.doc_to_choice(d), "target": task.doc_to_target(d)} for d in docs]


def _metric(recipe: Recipe, task: str, value: float, stderr: float,
            classes: ClassStats | None = None, per_doc: DocOutcomes | None = None
            ) -> TaskMetric:
    return TaskMetric(task=task, metric=recipe.gate.metric, value=value, stderr=stderr,
                      num_fewshot=0, samples=classes.documents if classes else 100,
                      classes=classes, per_doc=per_doc)


@pytest.mark.parametrize("name", sorted(recipe_files()))
def test_no_recipe_gate_passes_a_constant_answer(name: str, tmp_path: Path) -> None:
    """Whatever single answer it gives, against the weakest base there is (scoring 0)."""
    recipe = load_recipe(name)
    docs = _test_docs(recipe, tmp_path)
    truth = class_stats([_row(d["target"], d["target"], d["choices"]) for d in docs])
    assert truth is not None, f"{name}: its gate task is not multiple choice"
    for answer_class in truth.recall:
        answers = [d["choices"].index(answer_class) if answer_class in d["choices"]
                   else int(answer_class.removeprefix("option ")) - 1 for d in docs]
        rows = [_row(d["target"], a, d["choices"], doc_id=i)
                for i, (d, a) in enumerate(zip(docs, answers, strict=True))]
        stats = class_stats(rows)
        assert stats is not None and stats.top_share()[1] == 1.0
        assert stats.majority_per_doc is not None  # the majority check is the paired one
        acc = sum(d["target"] == a for d, a in zip(docs, answers, strict=True)) / len(docs)
        stderr = (acc * (1 - acc) / (len(rows) - 1)) ** 0.5
        base = [_metric(recipe, recipe.gate.task, 0.0, 0.0)]
        tuned = [_metric(recipe, recipe.gate.task, acc, stderr, stats,
                         doc_outcomes(rows, "acc", acc))]
        for guard in recipe.gate.guards:
            base.append(_metric(recipe, guard.task, 0.7, 0.05))
            tuned.append(_metric(recipe, guard.task, 0.7, 0.05))
        _, decision = decide(recipe, EvaluationResult(
            base=base, tuned=tuned, lm_eval_version="0.4.13", task_config_sha256={}, wall_s=1))
        assert not decision.passed, f"{name}: constant {answer_class!r} passed"
        assert f"Failed: not above the majority class, collapsed onto {answer_class!r}" in (
            decision.reason), decision.reason
        assert "collapsed onto one class" in decision.reason



@given(st.lists(st.tuples(st.sampled_from("abcd"), st.sampled_from("abcde")), min_size=1))
def test_recall_and_macro_f1_equal_scikit_learns(pairs: list[tuple[str, str]]) -> None:
    """Computed by hand to spare each evaluation process scikit-learn's import; it must
    agree with scikit-learn on any answers, classes never answered and answers never gold."""
    targets, answers = [t for t, _ in pairs], [a for _, a in pairs]
    recall, macro_f1 = _recall_and_macro_f1(targets, answers)
    labels = sorted(set(targets))
    assert recall == pytest.approx(dict(zip(labels, recall_score(
        targets, answers, labels=labels, average=None, zero_division=0), strict=True)))
    assert macro_f1 == pytest.approx(f1_score(
        targets, answers, labels=sorted(set(targets) | set(answers)), average="macro",
        zero_division=0))
