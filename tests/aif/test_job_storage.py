"""A real job on the tiny model, end to end: everything it leaves lies under its tenant's
root, owner-only; its scratch is gone once it ended; and its history can be told from the
audit log alone."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from aif import audit
from aif.settings import Settings
from aif.storage import CHECKPOINTS, DATASETS_CACHE, scratch
from aif.tenants import add_api_key
from aif.web.app import create_app
from events.bus import KafkaConfig
from events.messages import FineTuneRequested
from events.recipe import OutputSection
from events.states import JobState
from events.topics import Topics
from recipes import load_recipe
from tests.aif.conftest import run_to_the_end


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_a_finished_job_is_private_to_its_tenant_without_scratch_and_audited(
    broker: str, topics: Topics, db_url: str, sessions: sessionmaker[Session],
    tiny_request: FineTuneRequested, tmp_path: Path,
) -> None:
    recipe = tiny_request.recipe_inline
    assert recipe is not None
    request = FineTuneRequested(recipe_inline=recipe.model_copy(update={
        "train": recipe.train.model_copy(update={"checkpoint_steps": 10})}))
    settings = Settings(
        home=tmp_path / "home", database_url=db_url, kafka=KafkaConfig(bootstrap_servers=broker),
        topic_prefix=topics.prefix, embedded_broker=False,
        max_poll_interval_ms=3000, session_timeout_ms=3000,
    )
    job = run_to_the_end(settings, sessions, request)
    assert job.state == JobState.succeeded, job.reason

    work = settings.jobs_dir / "acme" / job.id
    assert Path(job.work_dir or "") == work
    assert (work / "adapter").is_dir() and (work / "evaluation").is_dir()
    assert not (work / CHECKPOINTS).exists() and not (work / DATASETS_CACHE).exists()
    loose = [(p, oct(stat.S_IMODE(p.stat().st_mode))) for p in [work.parent, *work.rglob("*")]
             if stat.S_IMODE(p.stat().st_mode) != (0o700 if p.is_dir() else 0o600)]
    assert loose == []

    with sessions() as s:
        auth = {"Authorization": f"Bearer {add_api_key(s, 'acme')[1]}"}
        s.commit()
    client = TestClient(create_app(sessions, settings))
    assert client.post(f"/v1/jobs/{job.id}/publish", headers=auth).status_code == 200

    with sessions() as s:
        rows = list(audit.entries(s, job_id=job.id))
    history = [r.detail["to_state"] if r.action == "state" else r.action for r in rows]
    assert history == ["submit", "validating", "queued", "training", "evaluating",
                       "handing_off", "hand-off", "succeeded", "publish"]
    assert rows[0].actor.startswith("signing:") and rows[-1].actor.startswith("api:")
    assert {r.actor for r in rows[1:-1]} == {audit.SERVICE}
    assert len(rows[0].sha256 or "") == 64  # of the record's bytes, never the bytes
    assert rows[6].event_id == f"{job.id}:model-ready"
    assert set(rows[6].detail["files_sha256"]) >= {"adapter_model.safetensors"}


def test_checkpoints_stay_only_where_the_recipe_keeps_them(tmp_path: Path) -> None:
    assert scratch(tmp_path, None) == [tmp_path / DATASETS_CACHE, tmp_path / CHECKPOINTS]
    keep = OutputSection(keep_checkpoints=True)
    recipe = load_recipe("grid-ticket-routing")
    assert scratch(tmp_path, recipe) == [tmp_path / DATASETS_CACHE, tmp_path / CHECKPOINTS]
    kept = recipe.model_copy(update={"output": keep})
    assert scratch(tmp_path, kept) == [tmp_path / DATASETS_CACHE]
