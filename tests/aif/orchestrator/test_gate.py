"""The gate's arithmetic on reported scores: gain, noise (paired by document where the
per-document outcomes are there, else the stderr rule) and guard tasks."""

from __future__ import annotations

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from aif.db.models import Job, Outbox
from aif.orchestrator.gate import decide
from aif.orchestrator.scores import metric_score, record_evaluation
from aif.web.pages.board import _cells
from events.envelope import CloudEvent
from events.messages import EvaluationCompleted, PairedComparison
from events.recipe import Recipe
from events.recipe_eval import GuardTask
from events.topics import Topics
from recipes import load_recipe
from stagefiles.jobspec import ClassStats, DocOutcomes, EvaluationResult, TaskMetric

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
        "needs >= +0.050 and > 2.0 x stderr 0.041 (no per-document pairs, so the unpaired "
        "stderr rule)."
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
    assert decision.reason.endswith(
        "x stderr 0.057 (no per-document pairs, so the unpaired stderr rule). "
        "Failed: within stderr.")


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


# Paired tests: base and tuned (and the constant answer) on the same documents.

def _docs(n: int, right: set[int]) -> DocOutcomes:
    return DocOutcomes(right=sorted(right), wrong=sorted(set(range(n)) - right))


def _paired(value_of: DocOutcomes, stderr: float | None = None, task: str = TASK,
            classes: ClassStats | None = None) -> TaskMetric:
    n = len(value_of.right) + len(value_of.wrong)
    return TaskMetric(task=task, metric="acc", value=len(value_of.right) / n, stderr=stderr,
                      num_fewshot=0, samples=n, classes=classes, per_doc=value_of)


def _classes(n: int, majority_right: set[int], chance: float = 0.2) -> ClassStats:
    majority = len(majority_right) / n
    return ClassStats(
        documents=n, majority=majority, majority_stderr=(majority * (1 - majority) / (n - 1))
        ** 0.5, majority_class="outage", chance=chance, macro_f1=0.6,
        recall={"outage": 0.98, "billing": 0.3},
        predicted={"outage": n * 7 // 10, "billing": n - n * 7 // 10},
        majority_per_doc=_docs(n, majority_right))


def _issue_25() -> tuple[TaskMetric, TaskMetric]:
    """The example of issue #25: 150 documents, tuned 0.767, majority 0.673, base 0.193.
    The majority class holds docs 0-100; tuned misses two of them (99, 100) and gets 16 of
    the others (101-116) right; base gets 26 of tuned's right and 3 of its wrong."""
    n = 150
    majority = set(range(101))
    tuned = set(range(99)) | set(range(101, 117))
    base = set(range(26)) | {99, 100, 117}
    return (_paired(_docs(n, base), 0.0324),
            _paired(_docs(n, tuned), 0.0347, classes=_classes(n, majority)))


def _issue_recipe(recipe: Recipe, **gate: object) -> Recipe:
    return recipe.model_copy(update={"gate": recipe.gate.model_copy(update={
        "min_gain": 0.01, "stderr_factor": 2.0, "majority_margin": 0.05, "guards": [],
        **gate})})


def test_issue_25_a_real_gain_over_the_majority_answer_now_passes(recipe: Recipe) -> None:
    base, tuned = _issue_25()
    gated = _issue_recipe(recipe)
    scores, decision = decide(gated, _result([base], [tuned]))
    assert decision.passed, decision.reason
    assert decision.reason.startswith(
        "acc on grid_ticket_routing: tuned 0.767 vs base 0.193 (+0.573, 95% CI +0.49 to "
        "+0.66; 89 docs only tuned right, 3 only base right; one-sided p < 0.001), needs "
        ">= +0.010 and p < 0.05. Answering 'outage' every time scores 0.673 (chance 0.200): "
        "tuned +0.093 over it (95% CI +0.04 to +0.15; 16 docs only tuned right, 2 only it "
        "right; one-sided p < 0.001), needs >= +0.050 and p < 0.05.")
    (score,) = scores
    assert score.vs_majority is not None and score.vs_base is not None
    assert (score.vs_majority.only_tuned_right, score.vs_majority.only_other_right) == (16, 2)
    assert score.vs_majority.p_value == pytest.approx(172 / 2**18)  # C(18,16..18) / 2^18
    assert (score.vs_base.documents, score.vs_base.diff) == (150, pytest.approx(86 / 150))

    # The unpaired rule, which the same scores without per-document outcomes fall back to,
    # rejected it: +0.093 is not above 2 x 0.052.
    unpaired = [m.model_copy(update={"per_doc": None}) for m in (base, tuned)]
    _, old = decide(gated, _result(unpaired[:1], unpaired[1:]))
    assert not old.passed
    assert ("tuned +0.093 over it, needs >= +0.050 and > 2.0 x stderr 0.052 (no per-document "
            "pairs, so the unpaired stderr rule).") in old.reason
    assert old.reason.endswith("Failed: not above the majority class.")


def test_a_few_discordant_documents_are_noise(recipe: Recipe) -> None:
    """200 documents, tuned and base agree on 192: 5 favour tuned, 3 base (p = 93/256)."""
    base = _docs(200, set(range(100)) | {100, 101, 102})
    tuned = _docs(200, set(range(100)) | {103, 104, 105, 106, 107})
    _, decision = decide(_issue_recipe(recipe), _result([_paired(base)], [_paired(tuned)]))
    assert not decision.passed
    assert decision.reason == (
        "acc on grid_ticket_routing: tuned 0.525 vs base 0.515 (+0.010, 95% CI -0.01 to +0.04; "
        "5 docs only tuned right, 3 only base right; one-sided p = 0.363), needs >= +0.010 "
        "and p < 0.05. Failed: not significant.")


def test_alpha_one_switches_the_noise_checks_off(recipe: Recipe) -> None:
    base = _docs(200, set(range(100)) | {100, 101, 102})
    tuned = _docs(200, set(range(100)) | {103, 104, 105, 106, 107})
    result = _result([_paired(base, 0.2)], [_paired(tuned, 0.2)])
    _, decision = decide(_issue_recipe(recipe, alpha=1.0), result)
    assert decision.passed, decision.reason
    assert decision.reason.endswith("needs >= +0.010 and no noise check (alpha 1).")
    unpaired = result.model_copy(update={"base": [_metric(0.515, 0.2)],
                                         "tuned": [_metric(0.525, 0.2)]})
    _, decision = decide(_issue_recipe(recipe, alpha=1.0), unpaired)  # the fallback too
    assert decision.passed, decision.reason


def test_pairs_documents_by_id_and_only_those_both_scored(recipe: Recipe) -> None:
    """Tuned scored docs 0-9, base 5-14 (listed in another order): only 5-9 pair up."""
    tuned = DocOutcomes(right=[9, 8, 7, 0, 1], wrong=[2, 3, 4, 5, 6])
    base = DocOutcomes(right=[14, 5, 6], wrong=[13, 12, 11, 10, 9, 8, 7])
    scores, _ = decide(_issue_recipe(recipe), _result([_paired(base)], [_paired(tuned)]))
    paired = scores[0].vs_base
    assert paired is not None
    assert (paired.documents, paired.only_tuned_right, paired.only_other_right) == (5, 3, 2)
    assert paired.diff == pytest.approx(1 / 5)


def test_a_guard_reports_its_drop_paired(recipe: Recipe) -> None:
    """100 guard documents: base 0.70, tuned 0.65; 8 only base right, 3 only tuned right."""
    base = _docs(100, set(range(70)))
    tuned = _docs(100, set(range(62)) | {70, 71, 72})
    guard = GuardTask(task=GUARD, max_regression=0.04)
    base_m, tuned_m = _issue_25()
    result = _result([base_m, _paired(base, task=GUARD)], [tuned_m, _paired(tuned, task=GUARD)])
    _, decision = decide(_issue_recipe(recipe, guards=[guard]), result)
    assert f"The guard acc on {GUARD}: tuned 0.650 vs base 0.700 (drop +0.050, 95% CI " in (
        decision.reason)
    assert ("8 docs only base right, 3 only tuned right; one-sided p = 0.113 of a drop), may "
            "drop <= 0.040.") in decision.reason  # P(X >= 8 | 11, 1/2) = 232 / 2048
    assert decision.reason.endswith(f"Failed: guard acc on {GUARD} regressed by 0.050.")


def test_a_uniform_guess_above_the_majority_answer_must_be_beaten(recipe: Recipe) -> None:
    """Questions with their own choices: guessing scores 0.4, the constant answer 0.3."""
    n = 100
    base = _paired(_docs(n, set(range(20))))
    for right, passed in ((45, False), (60, True)):
        tuned = _paired(_docs(n, set(range(right))),
                        classes=_classes(n, set(range(30, 60)), chance=0.4))
        _, decision = decide(_issue_recipe(recipe, majority_margin=0.0),
                             _result([base], [tuned]))
        assert (f"A uniform guess scores more than the constant answer (0.400): tuned {right} "
                "of 100 right, one-sided exact binomial p ") in decision.reason
        assert ("not above chance" not in decision.reason) is passed, decision.reason


def test_the_paired_figures_are_stored_and_colour_the_board(
    recipe: Recipe, sessions: sessionmaker[Session]
) -> None:
    """What `evaluation.completed` carries is stored with the score (migration 0015), and the
    leaderboard's delta colour follows the same paired test as the gate."""
    base, tuned = _issue_25()
    noise = (_docs(150, set(range(40)) | {40, 41, 42}),
             _docs(150, set(range(40)) | {43, 44, 45, 46, 47}))  # +0.013, p = 0.363
    with sessions() as s:
        for job_id, result in (("issue", _result([base], [tuned])),
                               ("noise", _result([_paired(noise[0])], [_paired(noise[1])]))):
            job = Job(id=job_id, tenant="acme", request_source="test", request_id=job_id,
                      request_sha256="x", recipe_name=recipe.name, state="evaluating",
                      reason="", request={}, recipe=recipe.model_dump(mode="json"))
            s.add(job)
            record_evaluation(s, job, _issue_recipe(recipe), result, Topics("gate"))
        s.commit()
        issue, noisy = s.get_one(Job, "issue"), s.get_one(Job, "noise")
        (row,) = issue.scores
        expected, _ = decide(_issue_recipe(recipe), _result([base], [tuned]))
        assert PairedComparison.model_validate(row.vs_base) == expected[0].vs_base
        assert PairedComparison.model_validate(row.vs_majority) == expected[0].vs_majority
        (event,) = [CloudEvent.model_validate_json(o.payload) for o in
                    s.scalars(select(Outbox).where(Outbox.key == "issue"))]
        assert event.data["scores"][0]["vs_majority"]["only_tuned_right"] == 16
        gated = _issue_recipe(recipe)
        assert _cells(issue, gated, "tuned")[TASK].verdict == "clears"
        assert _cells(noisy, gated, "tuned")[TASK].verdict == "short"


def test_a_stored_score_reads_back_as_the_event_carried_it(
    recipe: Recipe, sessions: sessionmaker[Session]
) -> None:
    """What is handed off, registered and shown is rebuilt from the scores table: it must be
    what `evaluation.completed` carried and the gate decided on, every field of it."""
    base, tuned = _issue_25()
    base = base.model_copy(update={"classes": _classes(150, set(range(101)))})
    guard = (_paired(_docs(100, set(range(70))), 0.04, task=GUARD),
             _paired(_docs(100, set(range(68))), 0.05, task=GUARD))
    result = _result([base, guard[0], _metric(0.2, None, "f1")],
                     [tuned, guard[1], _metric(0.5, None, "f1")])
    with sessions() as s:
        job = Job(id="readback", tenant="acme", request_source="test", request_id="readback",
                  request_sha256="x", recipe_name=recipe.name, state="evaluating", reason="",
                  request={}, recipe=recipe.model_dump(mode="json"))
        s.add(job)
        record_evaluation(s, job, _issue_recipe(recipe), result, Topics("gate"))
        s.commit()
    with sessions() as s:  # a fresh session: the values come from the database
        read = [metric_score(row) for row in s.get_one(Job, "readback").scores]
        (event,) = [CloudEvent.model_validate_json(o.payload) for o in
                    s.scalars(select(Outbox).where(Outbox.key == "readback"))]
    carried = EvaluationCompleted.model_validate(event.data).scores
    expected, _ = decide(_issue_recipe(recipe), result)
    assert read == carried == expected
    assert [r.model_dump() for r in read] == [e.model_dump() for e in expected]
    gate_score = read[0].model_dump()
    assert [name for name, value in gate_score.items() if value is None] == []
    assert read[1].vs_base is not None and read[1].vs_majority is None  # the guard
