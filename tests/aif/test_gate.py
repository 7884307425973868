"""The gate's arithmetic on reported scores: gain, noise and guard tasks."""

from __future__ import annotations

import pytest

from aif.orchestrator.gate import decide
from events.jobspec import EvaluationResult, TaskMetric
from events.recipe import GuardTask, Recipe
from recipes import load_recipe

TASK = "grid_ticket_routing"


@pytest.fixture(scope="module")
def recipe() -> Recipe:
    """The shipped recipe whose gate names TASK; each test sets the gate's numbers."""
    return load_recipe("grid-ticket-routing")


def _metric(value: float, stderr: float | None, metric: str = "acc",
            task: str = TASK) -> TaskMetric:
    return TaskMetric(
        task=task, metric=metric, value=value, stderr=stderr, num_fewshot=0, samples=200
    )


def _result(base: list[TaskMetric], tuned: list[TaskMetric]) -> EvaluationResult:
    return EvaluationResult(
        base=base, tuned=tuned, lm_eval_version="0.4.13", task_config_sha256={}, wall_s=1.0
    )


def _recipe(recipe: Recipe, min_gain: float = 0.05, stderr_factor: float = 2.0,
            guards: list[GuardTask] | None = None) -> Recipe:
    gate = recipe.gate.model_copy(update={"min_gain": min_gain, "stderr_factor": stderr_factor,
                                          "guards": guards or []})
    return recipe.model_copy(update={"gate": gate})


GUARD = "general_knowledge_guard"


@pytest.mark.parametrize(("tuned_guard", "passed"), [(0.66, True), (0.65, True), (0.6, False)])
def test_guard_allows_at_most_its_regression(recipe: Recipe, tuned_guard: float,
                                             passed: bool) -> None:
    gated = _recipe(recipe, guards=[GuardTask(task=GUARD, max_regression=0.05)])
    result = _result([_metric(0.4, 0.01), _metric(0.7, 0.05, task=GUARD)],
                     [_metric(0.9, 0.01), _metric(tuned_guard, 0.05, task=GUARD)])
    _, decision = decide(gated, result)
    assert decision.passed is passed
    assert f"The guard acc on {GUARD}: tuned {tuned_guard:.3f} vs base 0.700," in decision.reason
    if not passed:
        assert decision.reason.endswith(f"Failed: guard acc on {GUARD} regressed by 0.100.")


def test_guard_without_scores_fails(recipe: Recipe) -> None:
    gated = _recipe(recipe, guards=[GuardTask(task=GUARD)])
    _, decision = decide(gated, _result([_metric(0.4, 0.01)], [_metric(0.9, 0.01)]))
    assert not decision.passed
    assert decision.reason.endswith(f"Failed: guard acc on {GUARD} missing.")


def test_pass_states_the_numbers(recipe: Recipe) -> None:
    result = _result(
        [_metric(0.385, 0.03), _metric(0.2, None, "f1")],
        [_metric(0.912, 0.028), _metric(0.5, None, "f1")],
    )
    scores, decision = decide(_recipe(recipe), result)

    assert decision.passed
    assert decision.reason == (
        "acc on grid_ticket_routing: tuned 0.912 vs base 0.385 (+0.527), "
        "needs >= +0.050 and > 2.0 x stderr 0.041."
    )
    assert [(s.metric, s.base, s.tuned, s.base_stderr, s.tuned_stderr) for s in scores] == [
        ("acc", 0.385, 0.912, 0.03, 0.028),
        ("f1", 0.2, 0.5, None, None),
    ]


def test_fail_by_min_gain(recipe: Recipe) -> None:
    _, decision = decide(
        _recipe(recipe, min_gain=0.1), _result([_metric(0.5, 0.0)], [_metric(0.55, 0.0)])
    )
    assert not decision.passed
    assert decision.reason.endswith("Failed: below min_gain.")


def test_fail_by_stderr(recipe: Recipe) -> None:
    _, decision = decide(_recipe(recipe), _result([_metric(0.5, 0.04)], [_metric(0.6, 0.04)]))
    assert not decision.passed
    assert "(+0.100)" in decision.reason
    assert decision.reason.endswith("x stderr 0.057. Failed: within stderr.")


def test_missing_stderr_counts_as_zero(recipe: Recipe) -> None:
    _, decision = decide(_recipe(recipe), _result([_metric(0.5, None)], [_metric(0.6, None)]))
    assert decision.passed
    assert "stderr 0.000" in decision.reason


def test_no_gain_fails_both(recipe: Recipe) -> None:
    _, decision = decide(
        _recipe(recipe, min_gain=0.01, stderr_factor=1.0),
        _result([_metric(0.5, 0.0)], [_metric(0.5, 0.0)]),
    )
    assert not decision.passed
    assert decision.reason.endswith("Failed: below min_gain, within stderr.")


def test_stderr_factor_zero_leaves_the_decision_to_min_gain(recipe: Recipe) -> None:
    lenient = _recipe(recipe, min_gain=-0.1, stderr_factor=0.0)
    _, decision = decide(lenient, _result([_metric(0.5, 0.2)], [_metric(0.45, 0.2)]))
    assert decision.passed
    _, decision = decide(lenient, _result([_metric(0.5, 0.2)], [_metric(0.35, 0.2)]))
    assert decision.reason.endswith("Failed: below min_gain.")


@pytest.mark.parametrize(
    ("base", "tuned", "missing"),
    [
        ([_metric(0.5, 0.01, "f1")], [_metric(0.9, 0.01)], "base"),
        ([_metric(0.5, 0.01)], [], "tuned"),
        ([], [_metric(0.9, 0.01, "f1")], "base or tuned"),
    ],
)
def test_missing_metric_fails(
    recipe: Recipe, base: list[TaskMetric], tuned: list[TaskMetric], missing: str
) -> None:
    scores, decision = decide(_recipe(recipe), _result(base, tuned))
    assert not decision.passed
    assert decision.reason == (
        f"acc on grid_ticket_routing: no {missing} score in the evaluation results"
    )
    assert scores == []
