"""Decide whether a tuned adapter is worth publishing, from the scores the worker reported.

A gain must be both large enough to matter (`min_gain`) and beyond the noise of a finite
test set; otherwise a lucky run of a 200-document test would publish an adapter that is no
better than the base model. Base and tuned are scored on the same documents, so the noise
check is paired (`aif.orchestrator.paired`): the one-sided exact McNemar test on the
documents only one of them got right must fall below `alpha`. Where per-document outcomes
are missing (a metric not scored 0/1 per document, results from before they were kept) the
gate falls back to the unpaired rule, the gain above `stderr_factor` combined standard
errors, and says so. On multiple-choice tasks the tuned model must also beat the constant
majority answer the same way (and a uniform guess, where that scores higher), and must not
answer one class for (nearly) every document: on an imbalanced test set a model that learned
only the label prior beats a weak base model easily. Guard tasks (knowledge the base model
already has) may drop by at most their `max_regression`, so a fine-tune that wins its own
task by damaging the model is not published either.

The reason is one sentence per check, then the list of what failed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from aif.orchestrator.paired import above_rate, compare
from events.messages import GateDecision, MetricScore, PairedComparison
from events.recipe import Recipe
from events.recipe_eval import GateSection
from stagefiles.jobspec import ClassStats, DocOutcomes, EvaluationResult, TaskMetric
from stagefiles.sign_test import sign_test


@dataclass(frozen=True)
class Check:
    sentence: str
    failures: list[str] = field(default_factory=list)


def scores(result: EvaluationResult) -> list[MetricScore]:
    """Base against tuned for every task/metric that both runs report, with class figures
    and, where per-document outcomes exist, the paired comparisons."""
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
            vs_base=_pair(t.per_doc, b.per_doc),
            vs_majority=_pair(t.per_doc, t.classes.majority_per_doc if t.classes else None),
        )
        for t in result.tuned
        if (key := (t.task, t.metric)) in base
    ]


def combined_stderr(score: MetricScore) -> float:
    return math.hypot(score.base_stderr or 0.0, score.tuned_stderr or 0.0)


def gain_checks(gate: GateSection, score: MetricScore) -> tuple[bool, bool]:
    """(big enough, above the noise) for the gate's own score; the pages colour by it."""
    return (score.delta >= gate.min_gain,
            _beyond_noise(gate, score.vs_base, score.delta, combined_stderr(score)))


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
    by_key = {(s.task, s.metric): s for s in all_scores}
    score = by_key[(gate.task, gate.metric)]
    tuned = _find(result.tuned, gate.task, gate.metric)
    base = _find(result.base, gate.task, gate.metric)
    checks = [_over_base(gate, label, score)]
    if tuned is not None and tuned.classes is not None:
        checks.append(_over_majority(gate, score, tuned, tuned.classes))
        checks += _over_chance(gate, tuned, tuned.classes)
        checks.append(_spread(gate, tuned.classes, base.classes if base else None))
    checks += [_guard(by_key.get((g.task, g.metric)), f"guard {g.metric} on {g.task}",
                      g.max_regression) for g in gate.guards]
    failures = [f for c in checks for f in c.failures]
    reason = " ".join(c.sentence for c in checks)
    if failures:
        reason += f" Failed: {', '.join(failures)}."
    return all_scores, GateDecision(passed=not failures, reason=reason)


def _pair(tuned: DocOutcomes | None, other: DocOutcomes | None) -> PairedComparison | None:
    return compare(tuned, other) if tuned is not None and other is not None else None


def _beyond_noise(gate: GateSection, paired: PairedComparison | None, gain: float,
                  stderr: float) -> bool:
    """The paired test where documents pair up, else the unpaired stderr rule (off at
    `stderr_factor` 0); `alpha` 1 switches both off."""
    if gate.alpha >= 1:
        return True
    if paired is not None:
        return paired.p_value < gate.alpha
    return gate.stderr_factor == 0 or gain > gate.stderr_factor * stderr


def _noise_rule(gate: GateSection, paired: PairedComparison | None, stderr: float) -> str:
    if gate.alpha >= 1:
        return "no noise check (alpha 1)"
    if paired is not None:
        return f"p < {gate.alpha:g}"
    return (f"> {gate.stderr_factor} x stderr {stderr:.3f} (no per-document pairs, so the "
            "unpaired stderr rule)")


def _p(p_value: float) -> str:
    return "p < 0.001" if p_value < 0.001 else f"p = {p_value:.3f}"


def figures(paired: PairedComparison, other: str) -> str:
    """The paired interval, discordant counts and p-value, for a sentence (the reason, and
    the pages' paired figures, so both say it in the same words)."""
    return (f"95% CI {paired.ci_low:+.2f} to {paired.ci_high:+.2f}; {paired.only_tuned_right} "
            f"docs only tuned right, {paired.only_other_right} only {other} right; one-sided "
            f"{_p(paired.p_value)}")


def _over_base(gate: GateSection, label: str, score: MetricScore) -> Check:
    big_enough, above_noise = gain_checks(gate, score)
    paired = score.vs_base
    shown = f", {figures(paired, 'base')}" if paired else ""
    return Check(
        f"{label}: tuned {score.tuned:.3f} vs base {score.base:.3f} ({score.delta:+.3f}"
        f"{shown}), needs >= {gate.min_gain:+.3f} and "
        f"{_noise_rule(gate, paired, combined_stderr(score))}.",
        [text for ok, text in ((big_enough, "below min_gain"),
                               (above_noise, "not significant" if paired else "within stderr"))
         if not ok],
    )


def _over_majority(gate: GateSection, score: MetricScore, tuned: TaskMetric,
                   classes: ClassStats) -> Check:
    gain = tuned.value - classes.majority
    stderr = math.hypot(tuned.stderr or 0.0, classes.majority_stderr)
    paired = score.vs_majority
    shown = f" ({figures(paired, 'it')})" if paired else ""
    ok = gain >= gate.majority_margin and _beyond_noise(gate, paired, gain, stderr)
    return Check(
        f"Answering {classes.majority_class!r} every time scores {classes.majority:.3f} "
        f"(chance {classes.chance:.3f}): tuned {gain:+.3f} over it{shown}, needs >= "
        f"{gate.majority_margin:+.3f} and {_noise_rule(gate, paired, stderr)}.",
        [] if ok else ["not above the majority class"],
    )


def _over_chance(gate: GateSection, tuned: TaskMetric, classes: ClassStats) -> list[Check]:
    """Where choices differ per document a uniform guess may score more than the constant
    answer; tuned must then beat it too (an exact binomial test, no pairs needed). None
    where it does not, without per-document outcomes, or with the noise checks off."""
    if classes.chance <= classes.majority + 1e-9 or gate.alpha >= 1 or tuned.per_doc is None:
        return []
    right = len(tuned.per_doc.right)
    documents = right + len(tuned.per_doc.wrong)
    p_value = above_rate(right, documents, classes.chance)
    return [Check(
        f"A uniform guess scores more than the constant answer ({classes.chance:.3f}): tuned "
        f"{right} of {documents} right, one-sided exact binomial {_p(p_value)}, needs p < "
        f"{gate.alpha:g}.",
        [] if p_value < gate.alpha else ["not above chance"],
    )]


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


def _guard(score: MetricScore | None, name: str, max_regression: float) -> Check:
    """The drop's point estimate decides; where documents pair up, the sentence also gives
    its paired interval and the one-sided p-value of a drop."""
    if score is None:
        return Check(f"The {name} has no score.", [f"{name} missing"])
    drop = -score.delta
    paired = score.vs_base
    shown = "" if paired is None else (
        f" (drop {drop:+.3f}, 95% CI {-paired.ci_high:+.2f} to {-paired.ci_low:+.2f}; "
        f"{paired.only_other_right} docs only base right, {paired.only_tuned_right} only tuned "
        f"right; one-sided {_p(sign_test(paired.only_other_right, paired.only_tuned_right))} "
        "of a drop)")
    return Check(
        f"The {name}: tuned {score.tuned:.3f} vs base {score.base:.3f}{shown}, may drop <= "
        f"{max_regression:.3f}.",
        [f"{name} regressed by {drop:.3f}"] if drop > max_regression + 1e-9 else [],
    )


def _find(metrics: list[TaskMetric], task: str, metric: str) -> TaskMetric | None:
    return next((m for m in metrics if (m.task, m.metric) == (task, metric)), None)
