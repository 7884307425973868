"""Job leases and early decisions of the worker, on a real database."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import update
from sqlalchemy.orm import Session, sessionmaker

from aif.db.models import Job, utcnow
from aif.orchestrator.errors import LeaseLost
from events.messages import FineTuneRequested
from events.states import JobState
from stagefiles.jobspec import TRAINING_SPEC
from stagefiles.preflight_report import PREFLIGHT, PreflightReport
from tests.aif.conftest import local_worker, store_trusted


@pytest.mark.store
def test_only_one_worker_claims_a_job(sessions: sessionmaker[Session], tmp_path: Path) -> None:
    job_id = store_trusted(sessions, recipe="grid-ticket-routing")
    a, b = local_worker(sessions, tmp_path), local_worker(sessions, tmp_path)
    assert a.leases.claim() == job_id
    assert b.leases.claim() is None
    a.leases.heartbeat(job_id, JobState.validating)
    with pytest.raises(LeaseLost):
        b.leases.heartbeat(job_id, JobState.validating)


@pytest.mark.store
def test_expired_lease_is_re_adopted(sessions: sessionmaker[Session], tmp_path: Path) -> None:
    job_id = store_trusted(sessions, recipe="grid-ticket-routing")
    a, b = local_worker(sessions, tmp_path), local_worker(sessions, tmp_path)
    assert a.leases.claim() == job_id
    with sessions() as s:
        s.execute(update(Job).values(lease_expires_at=utcnow() - timedelta(seconds=1)))
        s.commit()
    assert b.leases.claim() == job_id
    with pytest.raises(LeaseLost):
        a.leases.heartbeat(job_id, JobState.validating)


def test_validation_freezes_the_recipe_with_overrides(
    sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    job_id = store_trusted(sessions, recipe="grid-ticket-routing", overrides={"max_steps": 3})
    w = local_worker(sessions, tmp_path)
    assert w.leases.claim() == job_id
    w.steps.validate(w.load(job_id))
    job = w.load(job_id)
    assert job.state == JobState.queued
    assert job.recipe["train"]["max_steps"] == 3
    assert job.preflight["usable"] and job.reason.startswith("pre-flight: 800/800")
    assert Path(job.work_dir).is_dir()


def test_a_request_adds_evaluation_tasks_once(
    sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    job_id = store_trusted(sessions, recipe="grid-ticket-routing",
                    extra_eval_tasks=["hellaswag", "arc_easy", "hellaswag", "grid_ticket_routing"])
    w = local_worker(sessions, tmp_path)
    assert w.leases.claim() == job_id
    w.steps.validate(w.load(job_id))
    names = [t["name"] for t in w.load(job_id).recipe["eval"]["tasks"]]
    assert names == ["grid_ticket_routing", "general_knowledge_guard", "hellaswag", "arc_easy"]


def test_a_bad_extra_task_name_is_refused() -> None:
    with pytest.raises(ValueError, match=r"extra_eval_tasks\.0"):
        FineTuneRequested.model_validate({"recipe": "grid-ticket-routing",
                                          "extra_eval_tasks": ["../../etc/passwd"]})


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        ({"recipe": "no-such-recipe"}, "recipe: no such recipe. Available: "),
        ({"recipe": "grid-ticket-routing", "train_file": "nonexistent.jsonl"},
         "data.train_file: no such file in the tenant's data root"),
    ],
)
def test_unrunnable_requests_are_rejected_with_the_reason(
    sessions: sessionmaker[Session], tmp_path: Path, data: dict, reason: str
) -> None:
    job_id = store_trusted(sessions, **data)
    w = local_worker(sessions, tmp_path)
    assert w.leases.claim() == job_id
    w.run_job(job_id)
    job = w.load(job_id)
    assert job.state == JobState.rejected
    assert reason in job.reason
    assert job.lease_owner is None


def test_bad_data_is_rejected_by_the_preflight_report_before_training(
    sessions: sessionmaker[Session], tmp_path: Path, tiny_request: FineTuneRequested,
    data_root: Path,
) -> None:
    bad = data_root / "acme" / "bad.jsonl"
    bad.write_text('{"text": "Sparks from the pole", "label": "emergency"}\n{"text": "x"}\n')
    assert tiny_request.recipe_inline is not None
    job_id = store_trusted(sessions,
                           recipe_inline=tiny_request.recipe_inline.model_dump(mode="json"),
                           train_file=str(bad))
    w = local_worker(sessions, tmp_path)
    assert w.leases.claim() == job_id
    w.run_job(job_id)
    job = w.load(job_id)
    assert job.state == JobState.rejected
    assert "line 2: missing column 'label'" in job.reason and "pre-flight: 1/2" in job.reason
    stored = PreflightReport.read(Path(job.work_dir) / PREFLIGHT)
    assert not stored.usable and stored.model_dump(mode="json") == job.preflight
    assert job.run_ref is None and not (Path(job.work_dir) / TRAINING_SPEC).exists()
