"""DPO jobs through the orchestrator as SFT jobs go (issue #26): hostile pair files refused by
the pre-flight by line and rule, the next job running; a DPO job through every stage, its
held-out pairs scored by log-likelihood preference, gated by the same paired test and guards;
and `train.init_from`, a registered model version of the tenant's own to train on from.

Real database, real stage processes started by the local launcher (and a real broker for the
whole job), on the tiny model.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from aif import registry
from aif.db.models import Outbox, RegisteredModel, Score
from aif.orchestrator import specs
from aif.orchestrator.errors import FinalError
from aif.orchestrator.scores import metric_score
from aif.settings import Settings
from events.bus import KafkaConfig
from events.envelope import CloudEvent
from events.messages import FineTuneRequested, JobProgress
from events.recipe import Recipe
from events.states import JobState
from events.topics import Topics
from recipes import copied_into, load_recipe
from tests.aif.conftest import everything_said, local_worker, run_to_the_end, store_trusted

SECRET = "SECRET-PAIR-5c1d"  # in every hostile file; no refusal may quote it


def _pair(i: int, **changes: str) -> dict[str, str]:
    return {"prompt": f"Vorgang {i}: Mein Stromzähler zeigt nichts an.\nAntwort:",
            "chosen": f" Vorgang {i}: Zuständig ist das Tiefbauamt.",
            "rejected": f" Vorgang {i}: Dafür sind wir nicht zuständig.", **changes}


def _jsonl(rows: list[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


def _one_bad_in_a_thousand() -> bytes:
    rows = [_pair(i) for i in range(1000)]
    rows[536] = _pair(536, chosen=SECRET, rejected=f" {SECRET}  ")
    return _jsonl(rows)


HOSTILE = {  # file -> (its bytes, what the job's reason says)
    "one-bad-in-1000.jsonl": (_one_bad_in_a_thousand, [
        "line 537: chosen and rejected are the same answer"]),
    "random.jsonl": (lambda: random.Random(0).randbytes(4096), ["line 1"]),
    "same-answers.jsonl": (lambda: _jsonl([_pair(i, rejected=_pair(i)["chosen"])
                                           for i in range(50)]),
                           ["line 1: chosen and rejected are the same answer"]),
    "10mb-row.jsonl": (lambda: _jsonl([_pair(0), _pair(1, chosen=SECRET * 625_000)]),
                       ["line 2: column 'chosen' has 10000000 characters"]),
}


def _dpo_recipe(tiny: Recipe, data_root: Path, **train: Any) -> Recipe:
    """The shipped DPO recipe on the tiny model, its files in tenant acme's data root, with
    a gate a random model can pass (these tests are about the path, not about learning)."""
    recipe = copied_into(load_recipe("citizen-reply-de-dpo"), data_root / "acme")
    gate = recipe.gate
    return recipe.model_copy(update={
        "name": "tiny-citizen-reply-dpo", "model": tiny.model,
        "train": recipe.train.model_copy(update={"batch_size": 4, **train}),
        "eval": recipe.eval.model_copy(update={"limit": 20}),
        "gate": gate.model_copy(update={
            "min_gain": -1.0, "alpha": 1.0, "majority_margin": -1.0, "max_class_share": 1.0,
            "guards": [g.model_copy(update={"max_regression": 1.0}) for g in gate.guards]}),
    })


def test_hostile_pair_files_are_refused_by_line_and_the_next_job_runs(
    sessions: sessionmaker[Session], tmp_path: Path, tiny_request: FineTuneRequested,
    data_root: Path,
) -> None:
    assert tiny_request.recipe_inline is not None
    recipe = _dpo_recipe(tiny_request.recipe_inline, data_root, max_steps=3)
    inline = recipe.model_dump(mode="json")
    bad = {}
    for name, (content, _) in HOSTILE.items():
        path = data_root / "acme" / name
        path.write_bytes(content())
        bad[name] = store_trusted(sessions, recipe_inline=inline, train_file=str(path))
    good = store_trusted(sessions, recipe_inline=inline)
    w = local_worker(sessions, tmp_path)
    for name, (_, said) in HOSTILE.items():
        assert w.leases.claim() == bad[name]
        w.run_job(bad[name])
        job = w.load(bad[name])
        assert job.state == JobState.rejected and job.attempts == 0, (name, job.reason)
        assert name in job.reason and all(s in job.reason for s in said), job.reason
        assert str(data_root) not in job.reason
        assert SECRET not in everything_said(sessions, bad[name]), name
    assert w.leases.claim() == good  # no refused job holds the queue
    w.steps.validate(w.load(good))
    assert w.load(good).state == JobState.queued, w.load(good).reason


def test_a_dpo_job_is_trained_evaluated_on_held_out_pairs_and_gated_like_sft(
    broker: str, topics: Topics, db_url: str, sessions: sessionmaker[Session],
    tiny_request: FineTuneRequested, data_root: Path, tmp_path: Path,
) -> None:
    assert tiny_request.recipe_inline is not None
    recipe = _dpo_recipe(tiny_request.recipe_inline, data_root, max_steps=4, logging_steps=2,
                         checkpoint_steps=2)
    settings = Settings(
        home=tmp_path / "home", database_url=db_url, kafka=KafkaConfig(bootstrap_servers=broker),
        topic_prefix=topics.prefix, embedded_broker=False,
        max_poll_interval_ms=3000, session_timeout_ms=3000,
    )
    job = run_to_the_end(settings, sessions, FineTuneRequested(recipe_inline=recipe))
    assert job.state == JobState.succeeded, job.reason
    assert job.preflight["train"]["rows_usable"] == 600  # the shipped pairs, each usable
    # Tokens of both sequences of each pair, as the estimate counted them for admission.
    assert job.measured["tokens"] == pytest.approx(job.estimate["tokens"], rel=0.1)
    with sessions() as s:
        scores = {(r.task, r.metric): metric_score(r)
                  for r in s.scalars(select(Score).where(Score.job_id == job.id))}
        events = [CloudEvent.model_validate_json(p) for p in s.scalars(
            select(Outbox.payload).where(Outbox.key == job.id))]
    progress = [JobProgress.model_validate(e.data) for e in events
                if e.type == JobProgress.TYPE and e.data["stage"] == "training"]
    assert [p.step for p in progress] == [2, 4]
    assert all(p.reward_margin is not None and p.reward_accuracy is not None for p in progress)
    # The gate task: win rate of chosen over rejected on 20 held-out pairs, base vs tuned,
    # paired document by document as for any gate task; the guard scored beside it.
    preference = scores["citizen_reply_preference_de", "acc"]
    assert preference.vs_base is not None and preference.vs_base.documents == 20
    assert ("general_knowledge_guard", "acc") in scores
    assert job.gate_passed and "citizen_reply_preference_de" in job.gate_reason
    assert "general_knowledge_guard" in job.gate_reason


def _register(sessions: sessionmaker[Session], tenant: str, name: str, version: int,
              folder: Path, base: str = "smollm2-135m-instruct", status: str = "ready") -> None:
    """A handed-off version whose adapter folder holds an adapter_config.json."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "adapter_config.json").write_text("{}")
    with sessions() as s:
        s.add(RegisteredModel(
            tenant=tenant, name=name, version=version,
            served_name=registry.served_name(name, version), job_id=f"{tenant}-{version}",
            status=status, base_model=base, base_revision="r1", adapter_uri=folder.as_uri(),
            files_sha256={}, merged_uri=None, merged_files_sha256={}, adapter={"r": 16},
            scores=[], gate_reason="", serving={}))
        s.commit()


def _starting_from(sessions: sessionmaker[Session], tmp_path: Path, ref: str
                   ) -> tuple[Recipe, str | None] | str:
    """What `train.init_from: ref` resolves to for tenant acme, or its refusal."""
    recipe = load_recipe("citizen-reply-de-dpo")
    recipe = recipe.model_copy(update={"train": recipe.train.model_copy(
        update={"init_from": ref})})
    with sessions() as s:
        try:
            return specs.starting_adapter(s, Settings(home=tmp_path), "acme", recipe)
        except FinalError as exc:
            return str(exc)


def test_init_from_resolves_a_usable_version_of_the_tenants_own_model_and_pins_it(
    sessions: sessionmaker[Session], tmp_path: Path,
) -> None:
    for version in (1, 2):
        _register(sessions, "acme", "acme/citizen-sft", version, tmp_path / f"sft-v{version}")
    _register(sessions, "acme", "acme/old", 1, tmp_path / "old", status="retired")
    _register(sessions, "acme", "acme/other-base", 1, tmp_path / "ob", base="qwen2.5-0.5b")
    _register(sessions, "bravo", "bravo/theirs", 1, tmp_path / "theirs")
    _register(sessions, "acme", "acme/gone", 1, tmp_path / "gone")
    (tmp_path / "gone" / "adapter_config.json").unlink()

    latest = _starting_from(sessions, tmp_path, "acme/citizen-sft")
    assert not isinstance(latest, str)
    recipe, folder = latest
    assert recipe.train.init_from == "acme/citizen-sft:2"  # a later v3 does not change the job
    assert folder == str(tmp_path / "sft-v2")
    assert _starting_from(sessions, tmp_path, "acme/citizen-sft:1")[1] == str(tmp_path / "sft-v1")
    refused = {ref: _starting_from(sessions, tmp_path, ref) for ref in (
        "acme/nope", "acme/citizen-sft:7", "acme/citizen-sft:x", "acme/old",
        "acme/other-base", "acme/gone")}
    assert refused == {
        "acme/nope": "train.init_from: model acme/nope: no such model",
        "acme/citizen-sft:7": "train.init_from: model acme/citizen-sft:7: no such model",
        "acme/citizen-sft:x": "train.init_from: acme/citizen-sft:x: the version after ':' "
                              "must be a number",
        "acme/old": "train.init_from: model acme/old:1 is retired (its adapter files are "
                    "removed)",
        "acme/other-base": "train.init_from: model acme/other-base:1 was trained on base model "
                           "qwen2.5-0.5b, not on this recipe's smollm2-135m-instruct",
        "acme/gone": "train.init_from: model acme/gone:1 has no adapter on the shared file "
                     "system training reads"}
    # Another tenant's model is refused exactly as a name no tenant has.
    theirs = _starting_from(sessions, tmp_path, "bravo/theirs")
    assert theirs == "train.init_from: model bravo/theirs: no such model"
    assert theirs == _starting_from(sessions, tmp_path, "bravo/never-was").replace(
        "never-was", "theirs")


def test_a_job_naming_another_tenants_model_is_rejected_before_any_stage_runs(
    sessions: sessionmaker[Session], tmp_path: Path,
) -> None:
    _register(sessions, "bravo", "bravo/theirs", 1, tmp_path / "theirs")
    job_id = store_trusted(sessions, recipe="citizen-reply-de-dpo",
                           overrides={"init_from": "bravo/theirs"})
    w = local_worker(sessions, tmp_path)
    assert w.leases.claim() == job_id
    w.run_job(job_id)
    job = w.load(job_id)
    assert job.state == JobState.rejected and job.attempts == 0
    assert job.reason == "train.init_from: model bravo/theirs: no such model"
    assert job.work_dir is None  # refused before the pre-flight stage had a folder
    assert str(tmp_path / "theirs") not in everything_said(sessions, job_id)
