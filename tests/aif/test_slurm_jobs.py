"""A whole job with its stages on the real single-node Slurm cluster (tiny model)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from sqlalchemy.orm import Session, sessionmaker

from aif.db.models import Job
from aif.service import Service
from aif.settings import Settings
from events.bus import KafkaConfig, envelope, make_producer, publish
from events.envelope import job_id_for
from events.messages import FineTuneRequested
from events.states import JobState
from events.topics import Topics

pytestmark = pytest.mark.slurm


def test_job_trains_and_evaluates_as_slurm_jobs(
    slurm_cluster: str, broker: str, topics: Topics, db_url: str,
    sessions: sessionmaker[Session], tiny_request: FineTuneRequested, tmp_path: Path,
) -> None:
    settings = Settings(
        home=tmp_path / "home", database_url=db_url, kafka=KafkaConfig(bootstrap_servers=broker),
        topic_prefix=topics.prefix, embedded_broker=False, launcher="slurm",
        max_poll_interval_ms=3000, session_timeout_ms=3000,
    )
    event = envelope(tiny_request, source="urn:test:slurm", tenant="acme")
    job_id = job_id_for(event.source, event.id)
    with Service(settings, web=False):
        producer = make_producer(settings.kafka)
        publish(producer, topics.requests, event, key=job_id)
        producer.close()
        deadline = time.monotonic() + 600
        while True:
            with sessions() as s:
                job = s.get(Job, job_id)
                if job is not None and JobState(job.state).terminal:
                    break
            assert time.monotonic() < deadline, "the job did not finish"
            time.sleep(1)
    assert job.state == JobState.succeeded, job.reason
    assert job.run_ref["launcher"] == "slurm" and job.run_ref["module"] == "evaluation.run"
    work = Path(job.work_dir)
    for stage in ("training", "evaluation"):
        script = (work / f"{stage}.sbatch").read_text()
        assert "srun --kill-on-bad-exit=1" in script
        assert (work / f"{stage}.exit").read_text().strip() == "0"
    assert "finetune: 800 examples" in (work / "training.log").read_text()
