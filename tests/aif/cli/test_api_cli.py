"""`aif submit --api URL --wait` against the real app served by uvicorn, the real broker and
the intake code: the request is signed, stored, followed over SSE to its final state."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import uvicorn
from typer.testing import CliRunner

from aif.cli import app as cli
from aif.db.models import Job
from aif.db.session import session_factory
from aif.jobstore.transitions import transition
from aif.orchestrator.intake import accept
from aif.settings import Settings
from aif.tenants import create_tenant
from aif.web.app import create_app
from events.bus import KafkaConfig, ensure_topics, make_consumer
from events.states import JobState
from events.topics import Topics
from tests.conftest import free_port


def test_submit_over_http_and_wait(tmp_path: Path, broker: str, topics: Topics) -> None:
    settings = Settings(home=tmp_path, topic_prefix=topics.prefix,
                        kafka=KafkaConfig(bootstrap_servers=broker))
    ensure_topics(settings.kafka, settings.topics.shared())
    sessions = session_factory(f"sqlite:///{tmp_path / 'aif.db'}")
    with sessions() as s:
        key = create_tenant(s, "acme").api_key
        s.commit()
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(sessions, settings), port=port,
                                           log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()

    def orchestrate() -> None:  # store the request as intake does, then run it to an end
        consumer = make_consumer(settings.kafka, settings.topics.requests, group_id=None,
                                 consumer_timeout_ms=30_000)
        record = next(iter(consumer))
        consumer.close()
        time.sleep(1.5)  # the CLI meanwhile waits for the job to appear
        with sessions() as s:
            result = accept(s, record.value, settings.topics, headers=record.headers)
            s.commit()
            job = s.get_one(Job, result.job_id)
            for state in (JobState.queued, JobState.cancelled):
                time.sleep(0.5)
                transition(s, job, state, settings.topics, f"to {state}")
                s.commit()

    worker = threading.Thread(target=orchestrate, daemon=True)
    worker.start()
    try:
        while not server.started:
            time.sleep(0.05)
        done = CliRunner().invoke(cli, ["submit", "grid-ticket-routing", "--max-steps", "3",
                                        "--init-from", "acme/sft:2",
                                        "--api", f"http://127.0.0.1:{port}", "--wait"],
                                  env={"AIF_API_KEY": key, "AIF_HOME": str(tmp_path)})
    finally:
        server.should_exit = True
    worker.join(timeout=30)
    assert done.exit_code == 1, done.output  # cancelled: not a success
    assert "submitted job" in done.output and "job finished: cancelled" in done.output
    for state in ("validating", "queued", "cancelled"):
        assert state in done.output
    with sessions() as s:
        (job,) = s.query(Job).all()
        assert job.tenant == "acme" and job.request["data"]["overrides"] == {
            "max_steps": 3, "init_from": "acme/sft:2"}

    refused = CliRunner().invoke(cli, ["submit", "grid-ticket-routing", "--api",
                                       f"http://127.0.0.1:{port}"], env={"AIF_API_KEY": ""})
    assert refused.exit_code == 2 and "AIF_API_KEY" in refused.output
    empty = CliRunner().invoke(cli, ["submit", "grid-ticket-routing", "--init-from", ""],
                               env={"AIF_HOME": str(tmp_path)})
    assert empty.exit_code == 2 and "init_from" in empty.output, empty.output
