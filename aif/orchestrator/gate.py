"""Decide whether a tuned adapter is worth publishing, from the scores the worker reported.

A gain must be both large enough to matter (`min_gain`) and larger than the noise of a
finite test set (`stderr_factor` combined standard errors); otherwise a lucky run of a
200-document test would publish an adapter that is no better than the base model. On
multiple-choice tasks the tuned model must also beat the constant majority answer the same
way, and must not answer one class for (nearly) every document: on an imbalanced test set a
model that learned only the label prior beats a weak base model easily. Guard tasks
(knowledge the base model already has) may drop by at most their `max_regression`, so a
fine-tune that wins its own task by damaging the model is not published either.

The reason is one sentence per check, then the list of what failed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from events.jobspec import ClassStats, EvaluationResult, TaskMetric
from events.messages import GateDecision, MetricScore
from events.recipe import GateSection, Recipe


@dataclass(frozen=True)
class Check:
    sentence: str
    failures: list[str] = field(default_factory=list)


def scores(result: EvaluationResult) -> list[MetricScore]:
    """Base against tuned for every task/metric that both runs report, with class figures."""
    base = {(m.task, m.metric): m for m in result.base}
    return [
        MetricScore(
            task=t.task,
            metric=t.metric,
            base=(b := base[key]).value,
            tuned=t.value,
            base_stderr=b.stderr,
            tuned_stderr=t.stderr,
            majority=t.classes.majority if t.classes else None,
            chance=t.classes.chance if t.classes else None,
            base_macro_f1=b.classes.macro_f1 if b.classes else None,
            tuned_macro_f1=t.classes.macro_f1 if t.classes else None,
            base_recall=b.classes.recall if b.classes else None,
            tuned_recall=t.classes.recall if t.classes else None,
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
    tuned = _find(result.tuned, gate.task, gate.metric)
    base = _find(result.base, gate.task, gate.metric)
    checks = [_over_base(gate, label, score)]
    if tuned is not None and tuned.classes is not None:
        checks.append(_over_majority(gate, tuned, tuned.classes))
        checks.append(_spread(gate, tuned.classes, base.classes if base else None))
    checks += [_guard(result, g.task, g.metric, g.max_regression) for g in gate.guards]
    failures = [f for c in checks for f in c.failures]
    reason = " ".join(c.sentence for c in checks)
    if failures:
        reason += f" Failed: {', '.join(failures)}."
    return all_scores, GateDecision(passed=not failures, reason=reason)


def _over_base(gate: GateSection, label: str, score: MetricScore) -> Check:
    big_enough, above_noise = gain_checks(gate, score)
    return Check(
        f"{label}: tuned {score.tuned:.3f} vs base {score.base:.3f} ({score.delta:+.3f}), "
        f"needs >= {gate.min_gain:+.3f} and > {gate.stderr_factor} x stderr "
        f"{combined_stderr(score):.3f}.",
        [text for ok, text in ((big_enough, "below min_gain"), (above_noise, "within stderr"))
         if not ok],
    )


def _over_majority(gate: GateSection, tuned: TaskMetric, classes: ClassStats) -> Check:
    gain = tuned.value - classes.majority
    stderr = math.hypot(tuned.stderr or 0.0, classes.majority_stderr)
    ok = gain >= gate.majority_margin and (
        gate.stderr_factor == 0 or gain > gate.stderr_factor * stderr)
    return Check(
        f"Answering {classes.majority_class!r} every time scores {classes.majority:.3f} "
        f"(chance {classes.chance:.3f}): tuned {gain:+.3f} over it, needs >= "
        f"{gate.majority_margin:+.3f} and > {gate.stderr_factor} x stderr {stderr:.3f}.",
        [] if ok else ["not above the majority class"],
    )


def _spread(gate: GateSection, tuned: ClassStats, base: ClassStats | None) -> Check:
    top, share = tuned.top_share()
    collapsed = share > gate.max_class_share and share > tuned.majority + 1e-9
    base_f1 = f" (base {base.macro_f1:.3f})" if base else ""
    if collapsed:
        sentence = (f"The tuned model collapsed onto one class: it answers {top!r} for "
                    f"{share:.0%} of {tuned.documents} documents, whose targets hold "
                    f"{tuned.majority:.0%} of the commonest class; macro-F1 "
                    f"{tuned.macro_f1:.3f}{base_f1}.")
    else:
        sentence = (f"Its commonest answer {top!r} takes {share:.0%} of {tuned.documents} "
                    f"documents (at most {gate.max_class_share:.0%}); macro-F1 "
                    f"{tuned.macro_f1:.3f}{base_f1}.")
    return Check(sentence, [f"collapsed onto {top!r}"] if collapsed else [])


def _guard(result: EvaluationResult, task: str, metric: str, max_regression: float) -> Check:
    name = f"guard {metric} on {task}"
    base_m, tuned_m = _find(result.base, task, metric), _find(result.tuned, task, metric)
    if base_m is None or tuned_m is None:
        return Check(f"The {name} has no score.", [f"{name} missing"])
    drop = base_m.value - tuned_m.value
    return Check(
        f"The {name}: tuned {tuned_m.value:.3f} vs base {base_m.value:.3f}, may drop <= "
        f"{max_regression:.3f}.",
        [f"{name} regressed by {drop:.3f}"] if drop > max_regression + 1e-9 else [],
    )


def _find(metrics: list[TaskMetric], task: str, metric: str) -> TaskMetric | None:
    return next((m for m in metrics if (m.task, m.metric) == (task, metric)), None)
