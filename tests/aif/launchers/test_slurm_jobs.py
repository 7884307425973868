"""A whole job with its stages on the real single-node Slurm cluster (tiny model)."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy.orm import Session, sessionmaker

from aif.settings import Settings
from events.bus import KafkaConfig
from events.messages import FineTuneRequested
from events.states import JobState
from events.topics import Topics
from tests.aif.conftest import run_to_the_end

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
    job = run_to_the_end(settings, sessions, tiny_request)
    assert job.state == JobState.succeeded, job.reason
    assert job.run_ref["launcher"] == "slurm" and job.run_ref["module"] == "serving.check"
    work = Path(job.work_dir)
    for stage in ("preflight", "training", "evaluation", "serving_check"):
        script = (work / f"{stage}.sbatch").read_text()
        assert "srun --kill-on-bad-exit=1" in script
        assert (work / f"{stage}.exit").read_text().strip() == "0"
    assert "finetune: 800 examples" in (work / "training.log").read_text()
