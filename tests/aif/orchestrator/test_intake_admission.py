"""Intake refuses requests whose effective recipe can never train, naming field and rule."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy.orm import Session, sessionmaker

from aif.db.models import Job
from aif.orchestrator.admission import Admission, trainability_problems
from aif.orchestrator.intake import Outcome, accept
from events.bus import envelope
from events.messages import FineTuneRequested
from events.recipe import HyperparameterOverrides
from events.signing import SigningKey, sign
from events.states import JobState
from events.topics import Topics
from recipes import RECIPES_DIR, load_recipe

RECIPE = load_recipe("grid-ticket-routing")


def _refusal(max_processes: int | None = None, **data: object) -> str | None:
    request = FineTuneRequested.model_validate({"recipe": "grid-ticket-routing", **data})
    return Admission(max_processes).refusal(request, "acme")


def test_a_shipped_recipe_with_sane_overrides_is_admitted() -> None:
    assert _refusal(overrides={"max_steps": 50, "num_processes": 2}, max_processes=2) is None
    assert Admission().refusal(FineTuneRequested(recipe_inline=RECIPE), "acme") is None


def test_max_steps_must_be_above_the_warmup_steps() -> None:
    # warmup_ratio 0.05: ceil(0.05 x 1) = 1 warmup step, so one step never trains.
    assert _refusal(overrides={"max_steps": 1}).startswith(
        "train.max_steps: must be above the warmup steps")
    assert _refusal(overrides={"max_steps": 2}) is None
    no_warmup = RECIPE.model_copy(update={"train": RECIPE.train.model_copy(
        update={"warmup_ratio": 0.0})})
    assert _refusal(recipe=None, recipe_inline=no_warmup.model_dump(),
                    overrides={"max_steps": 1}) is None


def test_the_learning_rate_must_be_above_zero() -> None:
    # The schema already forbids it; the rule guards recipes built without validation.
    zero = RECIPE.model_copy(update={"train": RECIPE.train.model_copy(
        update={"learning_rate": 0.0})})
    assert trainability_problems(zero) == ["train.learning_rate: must be above zero"]


def test_processes_are_capped_by_the_service() -> None:
    assert _refusal(max_processes=4, overrides={"num_processes": 8}) == (
        "train.num_processes: at most 4 on this service")
    many_eval = RECIPE.model_copy(update={"eval": RECIPE.eval.model_copy(
        update={"num_processes": 8})})
    assert trainability_problems(many_eval, max_processes=4) == [
        "eval.num_processes: at most 4 on this service"]
    assert trainability_problems(many_eval) == []  # None: no limit


def test_an_unknown_recipe_is_refused_with_a_suggestion() -> None:
    refusal = _refusal(recipe="grid-ticket-routng")
    assert refusal.startswith("recipe: no such recipe. Did you mean "
                              "'grid-ticket-routing'? Available: ")
    assert "routng" not in refusal


def test_shipped_recipes_are_read_again_when_a_file_changes(tmp_path: Path) -> None:
    source = RECIPES_DIR / "energy" / "grid_ticket_routing"
    folder = tmp_path / "energy" / "grid"
    folder.mkdir(parents=True)
    text = (source / "recipe.yaml").read_text()
    (folder / "recipe.yaml").write_text(text)
    assert load_recipe("grid-ticket-routing", tmp_path).train.max_steps == RECIPE.train.max_steps
    (folder / "recipe.yaml").write_text(text.replace("name: grid-ticket-routing",
                                                     "name: grid-two"))
    with pytest.raises(ValueError, match=r"no such recipe\. Available: grid-two$"):
        load_recipe("grid-ticket-routing", tmp_path)


def test_accept_dead_letters_what_admission_refuses_and_its_tenant_reads_why(
    sessions: sessionmaker[Session], acme_key: SigningKey,
) -> None:
    topics = Topics("t")
    raw = envelope(FineTuneRequested(recipe="grid-ticket-routing",
                                     overrides=HyperparameterOverrides(num_processes=16)),
                   source="urn:t", tenant="acme", event_id="e").to_bytes()
    headers = sign(raw, acme_key.id, acme_key.secret)
    with sessions() as s:
        result = accept(s, raw, topics, Admission(max_processes=8), headers=headers)
        s.commit()
    assert (result.outcome, result.reason) == (
        Outcome.dead_letter, "train.num_processes: at most 8 on this service")
    # Its tenant (the signing key's) reads why: the request is a job, rejected at intake.
    with sessions() as s:
        job = s.get_one(Job, result.job_id)
        assert (job.tenant, job.state, job.reason) == ("acme", JobState.rejected, result.reason)
        assert [t.to_state for t in job.transitions] == ["validating", "rejected"]
    # A stored request keeps its answer whatever the rules say now: refused stays refused
    # (a dead letter again, so one re-delivered before its dead letter went out is sent) ...
    with sessions() as s:
        again = accept(s, raw, topics, headers=headers)
        assert (again.outcome, again.job_id, again.reason) == (
            Outcome.dead_letter, result.job_id, result.reason)
    # ... and accepted stays a duplicate.
    raw = envelope(FineTuneRequested(recipe="grid-ticket-routing",
                                     overrides=HyperparameterOverrides(num_processes=16)),
                   source="urn:t", tenant="acme", event_id="e2").to_bytes()
    headers = sign(raw, acme_key.id, acme_key.secret)
    with sessions() as s:
        assert accept(s, raw, topics, headers=headers).outcome is Outcome.accepted
        s.commit()
        assert accept(s, raw, topics, Admission(max_processes=8),
                      headers=headers).outcome is Outcome.duplicate
