"""A model that fails its gate is never handed off: the job ends rejected with the numbers."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from aif.db.models import Outbox, Score
from aif.settings import Settings
from events.bus import KafkaConfig
from events.envelope import CloudEvent
from events.messages import EvaluationCompleted, FineTuneRequested, ModelReady
from events.states import JobState
from events.topics import Topics
from tests.aif.conftest import run_to_the_end


def test_failed_gate_rejects_the_job_and_publishes_no_model(
    broker: str, topics: Topics, db_url: str, sessions: sessionmaker[Session],
    tiny_request: FineTuneRequested, tmp_path: Path,
) -> None:
    recipe = tiny_request.recipe_inline
    assert recipe is not None
    impossible = recipe.model_copy(update={"gate": recipe.gate.model_copy(
        update={"min_gain": 0.5})})  # possible in principle (the pre-flight refuses a gain no
    # model can make), far beyond what 40 steps of the tiny model reach
    settings = Settings(
        home=tmp_path / "home", database_url=db_url, kafka=KafkaConfig(bootstrap_servers=broker),
        topic_prefix=topics.prefix, embedded_broker=False,
        max_poll_interval_ms=3000, session_timeout_ms=3000,
    )
    job = run_to_the_end(settings, sessions, FineTuneRequested(recipe_inline=impossible))
    assert job.state == JobState.rejected
    assert job.gate_passed is False and "Failed: below min_gain" in job.gate_reason
    assert job.reason == job.gate_reason
    # The compute it was admitted with, and what its training measured (rows at random from
    # a part epoch: the estimate takes their mean length).
    assert job.estimate["steps"] == job.measured["steps"] == recipe.train.max_steps
    assert job.measured["tokens"] == pytest.approx(job.estimate["tokens"], rel=0.1)
    assert job.measured["device_hours"] > 0 and job.measured["launcher"] == "local"
    with sessions() as s:
        assert s.scalars(select(Score).where(Score.job_id == job.id)).all()
        types = [CloudEvent.model_validate_json(r.payload).type
                 for r in s.scalars(select(Outbox).where(Outbox.key == job.id))]
    assert EvaluationCompleted.TYPE in types and ModelReady.TYPE not in types
