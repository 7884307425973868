"""`/metrics` of the web app and of the orchestrator, scraped and parsed as Prometheus does."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy.orm import Session, sessionmaker

from aif.db.models import DeadLetter, Job
from aif.jobstore.transitions import transition
from aif.metrics import ConsumerLagCollector, registry
from aif.service import Service
from aif.settings import Settings
from aif.web.app import create_app
from events.bus import KafkaConfig, ensure_topics, make_producer
from events.states import JobState
from events.topics import Topics
from tests.aif.conftest import store_trusted
from tests.conftest import free_port

PATH = [JobState.queued, JobState.training, JobState.evaluating, JobState.handing_off,
        JobState.failed]


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


@pytest.mark.store
def test_the_web_app_serves_job_store_figures(sessions: sessionmaker[Session],
                                              tmp_path: Path) -> None:
    topics = Settings().topics
    handed_off = store_trusted(sessions, recipe="grid-ticket-routing")
    waiting = store_trusted(sessions, recipe="grid-ticket-routing", train_file="x.jsonl")
    with sessions() as s:
        job = s.get_one(Job, handed_off)
        for state in PATH:
            transition(s, job, state, topics, "test")
        job.measured = {"tokens_per_s": 1200.0}
        transition(s, s.get_one(Job, waiting), JobState.queued, topics, "test")
        s.add(DeadLetter(source_topic="t", source_partition=0, source_offset=1,
                         fingerprint="f" * 64, reason="bad", size=3, value=b"bad"))
        s.commit()
    answer = TestClient(create_app(sessions, Settings(home=tmp_path))).get("/metrics")
    assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/plain")
    got = samples(answer.text)
    assert got[("aif_jobs", (("state", "failed"),))] == 1
    assert got[("aif_jobs", (("state", "queued"),))] == 1
    assert got[("aif_jobs", (("state", "training"),))] == 0
    assert got[("aif_queue_depth", ())] == 1
    assert got[("aif_queue_oldest_age_seconds", ())] >= 0
    ended = {stage: got[("aif_stage_duration_seconds_count", (("stage", stage),))]
             for stage in ("validating", "queued", "training", "evaluating", "handing_off")}
    assert ended == {"validating": 2, "queued": 1, "training": 1, "evaluating": 1,
                     "handing_off": 1}  # the waiting job's stay in the queue has not ended
    assert got[("aif_handoff_failures_total", ())] == 1
    assert got[("aif_dead_letters_total", ())] == 1
    assert got[("aif_training_tokens_per_second", ())] == 1200.0
    assert "acme" not in answer.text  # no tenant's name on a page without a key


def test_the_orchestrator_serves_metrics_with_the_consumer_lag(
    broker: str, topics: Topics, sessions: sessionmaker[Session], db_url: str,
    tmp_path: Path,
) -> None:
    port = free_port()
    settings = Settings(  # type: ignore[call-arg]
        home=tmp_path, database_url=db_url, kafka=KafkaConfig(bootstrap_servers=broker),
        topic_prefix=topics.prefix, embedded_broker=False, metrics_port=port,
        max_poll_interval_ms=3000, session_timeout_ms=3000,
        # a group of its own: the service stops while its consumer may still be joining,
        # and the embedded broker then holds the shared group's next join for minutes
        consumer_group=f"{topics.prefix}-orchestrator",
    )
    with Service(settings, web=False):
        answer = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=30)
    assert answer.status_code == 200
    got = samples(answer.text)
    assert got[("aif_jobs", (("state", "succeeded"),))] == 0
    lag = {k: v for k, v in got.items() if k[0] == "aif_consumer_lag"}
    assert lag and all(v == 0 for v in lag.values())  # nothing sent, nothing behind


def test_the_web_part_alone_needs_no_broker(sessions: sessionmaker[Session], db_url: str,
                                            tmp_path: Path) -> None:
    """`aif up --only web`, as the chart's web Deployment runs it: no broker, no consumer."""
    port = free_port()
    settings = Settings(home=tmp_path, database_url=db_url,  # type: ignore[call-arg]
                        kafka=KafkaConfig(bootstrap_servers=f"127.0.0.1:{free_port()}"),
                        web_port=port)
    with Service(settings, orchestrator=False) as service:
        for _ in range(100):
            try:
                answer = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5)
                break
            except httpx.ConnectError:
                time.sleep(0.1)
        assert service.broker is None and not service.stoppables
    assert samples(answer.text)[("aif_queue_depth", ())] == 0


def test_the_consumer_lag_counts_what_the_group_has_not_consumed(broker: str,
                                                                topics: Topics) -> None:
    kafka = KafkaConfig(bootstrap_servers=broker)
    ensure_topics(kafka, [topics.requests])
    producer = make_producer(kafka)
    for n in range(3):
        producer.send(topics.requests, key=b"k", value=b"record %d" % n).get(timeout=30)
    producer.close()
    lag = ConsumerLagCollector(kafka, "a-group-that-never-read", topics.requests)
    try:
        got = samples(generate_latest(registry(lag)).decode())
    finally:
        lag.close()
    behind = {k: v for k, v in got.items() if k[0] == "aif_consumer_lag"}
    assert len(behind) == 3 and sum(behind.values()) == 3  # one key: all on one partition
