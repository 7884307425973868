"""Hostile data and failing steps end in a clear refusal or a bounded retry, never a loop.

Real database, real pre-flight stage processes started by the local launcher.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from aif.db.models import Job, Outbox, utcnow
from events.envelope import CloudEvent
from events.messages import FineTuneRequested, JobProgress
from events.states import JobState
from tests.aif.conftest import everything_said, local_worker, store_trusted

SECRET = "SECRET-MARKER-7f3a"


def _tiny(request: FineTuneRequested, train_file: Path) -> dict:
    assert request.recipe_inline is not None
    return {"recipe_inline": request.recipe_inline.model_dump(mode="json"),
            "train_file": str(train_file)}


def test_random_bytes_are_refused_by_line_and_the_next_job_still_runs(
    sessions: sessionmaker[Session], tmp_path: Path, tiny_request: FineTuneRequested,
    data_root: Path,
) -> None:
    noise = data_root / "acme" / "noise.jsonl"
    noise.write_bytes(os.urandom(4096) + b"\n\xff\xfe\n")
    bad = store_trusted(sessions, **_tiny(tiny_request, noise))
    good = store_trusted(sessions, recipe="grid-ticket-routing", overrides={"max_steps": 3})
    w = local_worker(sessions, tmp_path)
    assert w.leases.claim() == bad
    w.run_job(bad)
    job = w.load(bad)
    assert job.state == JobState.rejected and job.attempts == 0
    assert "not UTF-8 text" in job.reason and "line 1" in job.reason
    assert w.leases.claim() == good  # the refused job no longer holds the queue
    w.steps.validate(w.load(good))
    assert w.load(good).state == JobState.queued


@pytest.mark.parametrize("suffix", [".jsonl", ".csv", ".parquet"])
def test_refusals_quote_no_data(
    sessions: sessionmaker[Session], tmp_path: Path, tiny_request: FineTuneRequested,
    suffix: str, caplog: pytest.LogCaptureFixture, data_root: Path,
) -> None:
    hostile = data_root / "acme" / f"hostile{suffix}"
    if suffix == ".jsonl":
        hostile.write_text(f'{{"text": "{SECRET}", "label": [\n{SECRET}\n"{SECRET}"\n')
    elif suffix == ".csv":
        hostile.write_bytes(f'text,label\n"{SECRET}",\xff{SECRET}\n'.encode("latin-1"))
    else:
        hostile.write_bytes(b"PAR1" + SECRET.encode() * 10)
    job_id = store_trusted(sessions, **_tiny(tiny_request, hostile))
    w = local_worker(sessions, tmp_path)
    assert w.leases.claim() == job_id
    with caplog.at_level(logging.DEBUG):
        w.run_job(job_id)
    job = w.load(job_id)
    assert job.state == JobState.rejected, job.reason
    assert f"hostile{suffix}" in job.reason  # the refusal names the file as the tenant did,
    assert str(data_root) not in job.reason  # not where the server keeps it ...
    assert (Path(job.work_dir) / "preflight.log").is_file()  # the stage's log is read below
    said = everything_said(sessions, job_id) + caplog.text
    assert SECRET not in said  # ... and never its contents


def test_a_step_that_keeps_failing_backs_off_then_fails_without_delaying_others(
    sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    broken = store_trusted(sessions, recipe="grid-ticket-routing")
    other = store_trusted(sessions, recipe="grid-ticket-routing")
    with sessions() as s:  # a job row that a bug left unreadable by the training step
        s.execute(update(Job).where(Job.id == broken)
                  .values(state=JobState.training.value, recipe={"name": 42}))
        s.commit()
    w = local_worker(sessions, tmp_path, max_attempts=3, retry_backoff_s=60)
    for attempt in (1, 2):
        assert w.leases.claim() == broken
        w.run_job(broken)
        job = w.load(broken)
        assert job.state == JobState.training and job.attempts == attempt
        assert job.lease_owner is None and job.next_attempt_at is not None
        assert f"attempt {attempt} of 3 failed, next in {60 * 2 ** (attempt - 1)} s" in job.reason
        # In back-off the job is not claimed: the next one is, and is not delayed.
        assert w.leases.claim() == other
        w.leases.release(other)
        with sessions() as s:  # the back-off is over
            s.execute(update(Job).where(Job.id == broken)
                      .values(next_attempt_at=utcnow() - timedelta(seconds=1)))
            s.commit()
    assert w.leases.claim() == broken
    w.run_job(broken)
    job = w.load(broken)
    assert job.state == JobState.failed
    assert job.reason == ("gave up after 3 attempts: internal error in the training step: "
                          "ValidationError")


def test_a_pre_flight_over_its_time_limit_is_stopped_and_rejected(
    sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    job_id = store_trusted(sessions, recipe="grid-ticket-routing")
    w = local_worker(sessions, tmp_path, preflight_timeout_s=0.5)
    assert w.leases.claim() == job_id
    w.run_job(job_id)
    job = w.load(job_id)
    assert job.state == JobState.rejected
    assert job.reason == "finetune.preflight ran longer than its limit of 0.5 s"


@pytest.mark.store
def test_progress_is_relayed_once_even_by_a_worker_that_re_adopts_the_job(
    sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    job_id = store_trusted(sessions, recipe="grid-ticket-routing")
    work = tmp_path / "work"
    work.mkdir()
    progress = work / "progress.jsonl"
    lines = [json.dumps({"stage": "training", "step": i, "total_steps": 3}) for i in (1, 2, 3)]
    progress.write_text("\n".join(lines[:2]) + "\n" + lines[2][:10])  # the 3rd half-written
    with sessions() as s:
        s.execute(update(Job).where(Job.id == job_id).values(work_dir=str(work)))
        s.commit()
    first, second = local_worker(sessions, tmp_path), local_worker(sessions, tmp_path)
    assert first.leases.claim() == job_id
    first.runner.relay_progress(job_id, progress)
    first.runner.relay_progress(job_id, progress)  # nothing new: nothing sent
    first.leases.release(job_id)
    progress.write_text("\n".join(lines) + "\n")
    assert second.leases.claim() == job_id
    second.runner.relay_progress(job_id, progress)
    with sessions() as s:
        events = [CloudEvent.model_validate_json(p) for p in s.scalars(
            select(Outbox.payload).order_by(Outbox.id)).all()]
    steps = [JobProgress.model_validate(e.data).step for e in events
             if e.type == JobProgress.TYPE]
    assert steps == [1, 2, 3]


def test_the_orchestrator_imports_no_torch_and_no_stage() -> None:
    code = ("import sys, aif.service, aif.orchestrator.worker, aif.orchestrator.intake; "
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
            "('torch', 'transformers', 'finetune', 'evaluation', 'lm_eval', 'peft')); "
            "print(bad); sys.exit(1 if bad else 0)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr


def test_finetune_does_not_import_evaluation() -> None:
    code = ("import sys, finetune.train, finetune.preflight; "
            "sys.exit(1 if any(m.split('.')[0] == 'evaluation' for m in sys.modules) else 0)")
    assert subprocess.run([sys.executable, "-c", code], timeout=120).returncode == 0
