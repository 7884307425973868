"""Decide whether a tuned adapter is worth publishing, from the scores the worker reported.

A gain must be both large enough to matter (`min_gain`) and larger than the noise of a
finite test set (`stderr_factor` combined standard errors); otherwise a lucky run of a
200-document test would publish an adapter that is no better than the base model. Guard
tasks (knowledge the base model already has) may drop by at most their `max_regression`, so a
fine-tune that wins its own task by damaging the model is not published either.
"""

from __future__ import annotations

import math

from events.jobspec import EvaluationResult, TaskMetric
from events.messages import GateDecision, MetricScore
from events.recipe import GateSection, Recipe


def scores(result: EvaluationResult) -> list[MetricScore]:
    """Base against tuned for every task/metric that both runs report."""
    base = {(m.task, m.metric): m for m in result.base}
    return [
        MetricScore(
            task=t.task,
            metric=t.metric,
            base=base[key].value,
            tuned=t.value,
            base_stderr=base[key].stderr,
            tuned_stderr=t.stderr,
        )
        for t in result.tuned
        if (key := (t.task, t.metric)) in base
    ]


def combined_stderr(score: MetricScore) -> float:
    return math.hypot(score.base_stderr or 0.0, score.tuned_stderr or 0.0)


def gain_checks(gate: GateSection, score: MetricScore) -> tuple[bool, bool]:
    """(big enough, above the noise) for the gate's own score; the pages colour by it."""
    # stderr_factor 0 switches the noise check off (min_gain alone decides).
    return (score.delta >= gate.min_gain,
            gate.stderr_factor == 0 or score.delta > gate.stderr_factor * combined_stderr(score))


def decide(recipe: Recipe, result: EvaluationResult) -> tuple[list[MetricScore], GateDecision]:
    gate = recipe.gate
    all_scores = scores(result)
    label = f"{gate.metric} on {gate.task}"
    missing = [
        run
        for run, metrics in (("base", result.base), ("tuned", result.tuned))
        if not _find(metrics, gate.task, gate.metric)
    ]
    if missing:
        reason = f"{label}: no {' or '.join(missing)} score in the evaluation results"
        return all_scores, GateDecision(passed=False, reason=reason)
    score = next(s for s in all_scores if (s.task, s.metric) == (gate.task, gate.metric))
    stderr = combined_stderr(score)
    big_enough, above_noise = gain_checks(gate, score)
    reason = (
        f"{label}: {score.tuned:.3f} vs base {score.base:.3f} ({score.delta:+.3f}); "
        f"needs >= {gate.min_gain:+.3f} and > {gate.stderr_factor} x stderr {stderr:.3f}"
    )
    failures = [
        text
        for ok, text in ((big_enough, "below min_gain"), (above_noise, "within stderr"))
        if not ok
    ]
    for guard in gate.guards:
        base_m = _find(result.base, guard.task, guard.metric)
        tuned_m = _find(result.tuned, guard.task, guard.metric)
        name = f"guard {guard.metric} on {guard.task}"
        if base_m is None or tuned_m is None:
            reason += f"; {name}: no score"
            failures.append(f"{name} missing")
            continue
        drop = base_m.value - tuned_m.value
        reason += (f"; {name}: {tuned_m.value:.3f} vs base {base_m.value:.3f} "
                   f"(may drop <= {guard.max_regression:.3f})")
        if drop > guard.max_regression + 1e-9:
            failures.append(f"{name} regressed by {drop:.3f}")
    if failures:
        reason += f" - failed: {', '.join(failures)}"
    return all_scores, GateDecision(passed=not failures, reason=reason)


def _find(metrics: list[TaskMetric], task: str, metric: str) -> TaskMetric | None:
    return next((m for m in metrics if (m.task, m.metric) == (task, metric)), None)
