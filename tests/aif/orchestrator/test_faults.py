"""Faults injected into real orchestrator processes on the real broker and database.

The jobs train the tiny random model from `tiny_model_dir` (seconds, not minutes); the
processes, the broker, the database and the kills are real.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from kafka import KafkaAdminClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from aif.db.models import Job, Outbox
from aif.follow import follow_job
from events.bus import KafkaConfig, envelope, make_producer, publish
from events.envelope import job_id_for
from events.messages import FineTuneRequested, JobProgress, JobStatusChanged, ModelReady
from events.states import JobState
from events.topics import Topics
from tests.aif.conftest import signing_key
from tests.conftest import free_port

pytestmark = pytest.mark.store  # leases, the outbox and the stored job across killed processes

AIF = str(Path(sys.executable).with_name("aif"))
UNRUNNABLE = FineTuneRequested(recipe="grid-ticket-routing", train_file="nonexistent.jsonl")
"""Passes intake; the worker rejects it at once, without training."""


class Orchestrator:
    """`aif up` in its own process, configured like a deployment would be."""

    def __init__(self, env: dict[str, str], log: Path, failpoints: str = "") -> None:
        self.log = log
        with log.open("ab") as out:
            self.proc = subprocess.Popen(
                [AIF, "up"], stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env={**os.environ, **env, "AIF_FAILPOINTS": failpoints},
            )

    def kill9(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.kill9()


@pytest.fixture
def orchestrators(broker: str, db_url: str, topics: Topics,
                  tmp_path: Path) -> Iterator[tuple[dict[str, str], list[Orchestrator]]]:
    env = {
        "AIF_HOME": str(tmp_path / "home"),
        "AIF_DATABASE_URL": db_url,
        "AIF_KAFKA__BOOTSTRAP_SERVERS": broker,
        "AIF_TOPIC_PREFIX": topics.prefix,
        "AIF_CONSUMER_GROUP": f"{topics.prefix}-orchestrators",
        "AIF_MAX_POLL_INTERVAL_MS": "3000",
        "AIF_SESSION_TIMEOUT_MS": "3000",
        "AIF_LEASE_S": "3",
        "AIF_WEB_PORT": str(free_port()),
        "AIF_EMBEDDED_BROKER": "false",
    }
    started: list[Orchestrator] = []
    yield env, started
    for orchestrator in started:
        orchestrator.stop()


def _publish(broker: str, topics: Topics, data: FineTuneRequested,
             sessions: sessionmaker[Session]) -> str:
    """Publish the request signed by tenant acme, with a key added to the job store."""
    event = envelope(data, source="urn:test:faults", tenant="acme")
    job_id = job_id_for("acme", event.source, event.id)
    producer = make_producer(KafkaConfig(bootstrap_servers=broker))
    publish(producer, topics.requests, event, key=job_id, signing_key=signing_key(sessions))
    producer.close()
    return job_id


def _until(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.3)


def _job_count(sessions: sessionmaker[Session]) -> int:
    with sessions() as s:
        return s.scalar(select(func.count()).select_from(Job))


def _state(sessions: sessionmaker[Session], job_id: str) -> str | None:
    with sessions() as s:
        job = s.get(Job, job_id)
        return job.state if job else None


def test_kill_between_store_and_offset_commit_gives_exactly_one_job(
    broker: str, topics: Topics, sessions: sessionmaker[Session], orchestrators, tmp_path: Path,
) -> None:
    env, started = orchestrators
    first = Orchestrator(env, tmp_path / "first.log", failpoints="intake.after_store")
    started.append(first)
    job_id = _publish(broker, topics, UNRUNNABLE, sessions)
    first.proc.wait(120)
    assert first.proc.returncode == -signal.SIGKILL
    assert _job_count(sessions) == 1  # stored, but Kafka never heard of it

    second = Orchestrator(env, tmp_path / "second.log")
    started.append(second)
    _until(lambda: _state(sessions, job_id) == JobState.rejected, 120, "the job to be rejected")
    admin = KafkaAdminClient(bootstrap_servers=broker)
    group = env["AIF_CONSUMER_GROUP"]

    def committed() -> int:
        offsets = admin.list_group_offsets(group).get(group, {})
        return sum(o.offset for o in offsets.values() if o.offset > 0)

    _until(lambda: committed() == 1, 60, "the re-delivered record's offset to be committed")
    admin.close()
    assert _job_count(sessions) == 1


def test_job_of_a_killed_orchestrator_is_re_adopted_and_trained_once(
    broker: str, topics: Topics, sessions: sessionmaker[Session], orchestrators,
    tiny_request: FineTuneRequested, tmp_path: Path,
) -> None:
    env, started = orchestrators
    first = Orchestrator(env, tmp_path / "first.log")
    started.append(first)
    cfg = KafkaConfig(bootstrap_servers=broker)
    job_id = _publish(broker, topics, tiny_request, sessions)
    for ev in follow_job(cfg, topics, "acme", job_id, timeout_s=300):
        if isinstance(ev, JobProgress) and ev.stage == "training":
            break
    first.kill9()  # training goes on, orphaned

    second = Orchestrator(env, tmp_path / "second.log")
    started.append(second)
    _until(lambda: _state(sessions, job_id) == JobState.succeeded, 600, "the job to succeed")

    _until(lambda: _unpublished(sessions) == 0, 30, "the outbox to drain")  # all acked
    all_events = _read_all(broker, topics, job_id)
    assert sum(isinstance(e, ModelReady) for e in all_events) == 1
    states = [e.state for e in all_events if isinstance(e, JobStatusChanged)]
    assert states.count(JobState.training) == 1 and states[-1] == JobState.succeeded
    with sessions() as s:
        work = Path(s.get_one(Job, job_id).work_dir)
    assert (work / "training.log").read_text().count("finetune: 800 examples") == 1


def _unpublished(sessions: sessionmaker[Session]) -> int:
    with sessions() as s:
        return s.scalar(select(func.count()).select_from(Outbox).where(
            Outbox.published_at.is_(None)))


def _read_all(bootstrap: str, topics: Topics, job_id: str) -> list:
    """The data of every event of the job on tenant acme's status and models topics."""
    from events.messages import EVENT_TYPES

    return [EVENT_TYPES[e.type].model_validate(e.data)
            for e in _raw_events(bootstrap, topics) if e.subject == job_id]


def test_broker_restart_loses_no_status_event_and_sends_none_twice(
    topics: Topics, sessions: sessionmaker[Session], db_url: str,
    tiny_request: FineTuneRequested, tmp_path: Path,
) -> None:
    from aif.broker import EmbeddedBroker
    from aif.service import Service
    from aif.settings import Settings

    bootstrap = f"127.0.0.1:{free_port()}"
    broker = EmbeddedBroker(bootstrap, tmp_path / "broker.log")
    broker.start()
    settings = Settings(
        home=tmp_path / "home", database_url=db_url,
        kafka=KafkaConfig(bootstrap_servers=bootstrap), topic_prefix=topics.prefix,
        embedded_broker=False, max_poll_interval_ms=3000, session_timeout_ms=3000,
    )
    service = Service(settings, web=False).start()
    try:
        job_id = _publish(bootstrap, topics, tiny_request, sessions)
        _until(lambda: _state(sessions, job_id) == JobState.training, 120, "training")
        broker.stop()  # memory-only: every topic, offset and group is gone
        _until(lambda: _state(sessions, job_id) == JobState.succeeded, 600,
               "the job to finish while the broker is down")
        held_back = _pending_event_ids(sessions)
        assert len(held_back) >= 3  # at least evaluating, handing_off and succeeded

        broker.start()
        _until(lambda: _unpublished(sessions) == 0, 120, "the outbox to drain")
        second = _publish(bootstrap, topics, UNRUNNABLE, sessions)
        _until(lambda: _state(sessions, second) == JobState.rejected, 120,
               "a request sent after the restart to be served")
        _until(lambda: _unpublished(sessions) == 0, 60, "the outbox to drain again")
        ids = [e.id for e in _raw_events(bootstrap, topics)]
        assert len(ids) == len(set(ids)), "an event was published twice"
        assert set(held_back) <= set(ids), "an event written while the broker was down is lost"
    finally:
        service.stop()
        broker.stop()


def _pending_event_ids(sessions: sessionmaker[Session]) -> list[str]:
    from events.envelope import CloudEvent

    with sessions() as s:
        rows = s.scalars(select(Outbox).where(Outbox.published_at.is_(None))).all()
        return [CloudEvent.model_validate_json(r.payload).id for r in rows]


def _raw_events(bootstrap: str, topics: Topics) -> list:
    """Every record on tenant acme's status and models topics, read up to the end offsets
    asked for first: all of them however slowly a loaded broker answers a fetch, where
    stopping at the first empty poll would miss whole partitions."""
    from kafka import TopicPartition

    from events.bus import make_consumer
    from events.envelope import CloudEvent

    consumer = make_consumer(KafkaConfig(bootstrap_servers=bootstrap))
    parts: list[TopicPartition] = []

    def known() -> bool:
        consumer.topics()  # a metadata round trip: a new client may not know the topics yet
        found = {t: consumer.partitions_for_topic(t) for t in topics.of_tenant("acme")}
        parts[:] = [TopicPartition(t, p) for t, ps in found.items() for p in ps or []]
        return all(found.values())

    _until(known, 30, "the status and models topics to be known")
    consumer.assign(parts)
    consumer.seek_to_beginning(*parts)
    ends = consumer.end_offsets(parts)
    events = []
    deadline = time.monotonic() + 60
    while any(consumer.position(p) < ends[p] for p in parts):
        assert time.monotonic() < deadline, "the topics were not read to their end offsets"
        batch = consumer.poll(timeout_ms=500)
        events += [CloudEvent.from_bytes(r.value) for rs in batch.values() for r in rs]
    consumer.close()
    return events


@pytest.mark.postgres
def test_two_orchestrators_on_postgres_run_each_job_exactly_once(
    broker: str, topics: Topics, postgres_url: str, tiny_request: FineTuneRequested,
    tmp_path: Path,
) -> None:
    from aif.db.session import session_factory

    sessions = session_factory(postgres_url)
    env = {
        "AIF_HOME": str(tmp_path / "home"), "AIF_DATABASE_URL": postgres_url,
        "AIF_KAFKA__BOOTSTRAP_SERVERS": broker, "AIF_TOPIC_PREFIX": topics.prefix,
        "AIF_CONSUMER_GROUP": f"{topics.prefix}-orchestrators",
        "AIF_MAX_POLL_INTERVAL_MS": "3000", "AIF_SESSION_TIMEOUT_MS": "3000",
        "AIF_EMBEDDED_BROKER": "false",
    }
    started = [Orchestrator({**env, "AIF_WEB_PORT": str(free_port())}, tmp_path / f"o{i}.log")
               for i in range(2)]
    try:
        jobs = [_publish(broker, topics, tiny_request, sessions) for _ in range(3)]
        _until(lambda: all(_state(sessions, j) in ("succeeded", "rejected", "failed")
                           for j in jobs), 600, "all jobs to finish")
        with sessions() as s:
            rows = [s.get_one(Job, j) for j in jobs]
            assert [r.state for r in rows] == ["succeeded"] * 3
            for row in rows:
                log = (Path(row.work_dir) / "training.log").read_text()
                assert log.count("finetune: 800 examples") == 1
        logs = [o.log.read_text() for o in started]
        assert all("aif-tuning is up" in text for text in logs)
    finally:
        for orchestrator in started:
            orchestrator.stop()
