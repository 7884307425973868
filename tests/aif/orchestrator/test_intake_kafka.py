"""Intake on the real embedded broker: offsets, dead letters, duplicates, ordering.

Records are signed by tenant acme unless a test is about unsigned ones; the identity rules on
the broker are in test_intake_identity.py.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time

import pytest
from kafka import KafkaProducer, TopicPartition
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from aif.db.models import DeadLetter, Job
from aif.orchestrator.dead_letters import DLQ_EXCERPT_BYTES
from aif.orchestrator.intake import IntakeResult, Outcome
from aif.orchestrator.kafka_intake import Intake, StoredBatch
from events.bus import KafkaConfig, ensure_topics, envelope, make_consumer, make_producer
from events.messages import FineTuneRequested
from events.signing import SigningKey, sign
from events.topics import Topics

pytestmark = pytest.mark.store  # the offset is committed only after the store's transaction

FAST_GROUP = {"max_poll_interval_ms": 3000, "session_timeout_ms": 3000,
              "heartbeat_interval_ms": 500}


def _intake(cfg: KafkaConfig, topics: Topics, sessions: sessionmaker[Session],
            require_signed_events: bool = True) -> Intake:
    consumer = make_consumer(cfg, group_id=f"{topics.prefix}-g", **FAST_GROUP)
    return Intake(consumer, make_producer(cfg), sessions, topics,
                  require_signed_events=require_signed_events)


def _drain(intake: Intake, expected: int, timeout: float = 60) -> list:
    results: list = []
    deadline = time.monotonic() + timeout
    while len(results) < expected and time.monotonic() < deadline:
        results += intake.poll_once()
    return results


def test_poison_is_dead_lettered_and_the_partition_moves_on(
    broker: str, topics: Topics, sessions: sessionmaker[Session], acme_key: SigningKey,
) -> None:
    cfg = KafkaConfig(bootstrap_servers=broker)
    ensure_topics(cfg, topics.shared(), partitions=1)
    producer = make_producer(cfg)
    good = envelope(FineTuneRequested(recipe="grid-ticket-routing"), source="urn:t",
                    tenant="acme", event_id="ok-1").to_bytes()
    producer.send(topics.requests, key=b"k", value=b"\x00poison",
                  headers=sign(b"\x00poison", acme_key.id, acme_key.secret))
    for _ in range(100):
        producer.send(topics.requests, key=b"k", value=good,
                      headers=sign(good, acme_key.id, acme_key.secret))
    producer.flush()

    intake = _intake(cfg, topics, sessions)
    results = _drain(intake, 101)
    intake.consumer.close()
    assert [r.outcome for r in results] == [Outcome.dead_letter, Outcome.accepted] + [
        Outcome.duplicate] * 99
    with sessions() as s:
        assert s.scalar(select(func.count()).select_from(Job)) == 1

    records = _dead_letters(cfg, topics)
    assert len(records) == 1
    assert records[0].value == b"\x00poison"  # original bytes kept
    headers = dict(records[0].headers)
    assert b"not JSON" in headers["aif.dlq.reason"]
    assert headers["aif.dlq.topic"] == topics.requests.encode()
    assert headers["aif.dlq.offset"] == b"0"

    # Offsets were committed: the group's next member starts after the last record.
    again = _intake(cfg, topics, sessions)
    assert _drain(again, 1, timeout=8) == []
    again.consumer.close()


def _dead_letters(cfg: KafkaConfig, topics: Topics, settle_s: float = 3) -> list:
    """Everything on the dead-letter topic, read until nothing new comes for `settle_s`."""
    dlq = make_consumer(cfg)
    tp = TopicPartition(topics.dead_letter, 0)
    dlq.assign([tp])
    dlq.seek_to_beginning(tp)
    records: list = []
    while batch := dlq.poll(timeout_ms=int(settle_s * 1000)):
        records += [r for rs in batch.values() for r in rs]
    dlq.close()
    return records


def _event(event_id: str | None, data: bytes = b'{"recipe": "grid-ticket-routing"}') -> bytes:
    head = {"specversion": "1.0", "source": "urn:t", "tenant": "acme",
            "type": FineTuneRequested.TYPE} | ({"id": event_id} if event_id else {})
    return json.dumps(head).encode()[:-1] + b', "data": ' + data + b"}"


def test_hostile_records_cost_no_neighbour(
    broker: str, topics: Topics, sessions: sessionmaker[Session], acme_key: SigningKey,
) -> None:
    """The issue's cases in one batch: each hostile record is one dead letter, each
    well-formed request one job."""
    cfg = KafkaConfig(bootstrap_servers=broker)
    ensure_topics(cfg, topics.shared(), partitions=1)
    deep = _event("deep", b'{"a": ' + b"[" * 10_000 + b"]" * 10_000 + b"}")
    huge = _event("huge", b'{"recipe": "grid-ticket-routing", "labels": {"a": "'
                  + b"x" * (2 * 1024 * 1024) + b'"}}')
    values = [_event("ok-1"), deep, _event("ok-2"), huge, _event("ok-3"), _event(None),
              _event("ok-4")]
    producer = KafkaProducer(max_request_size=4 * 1024 * 1024, **cfg.client_kwargs())
    for value in values:
        producer.send(topics.requests, key=b"k", value=value,
                      headers=sign(value, acme_key.id, acme_key.secret))
    producer.flush()
    producer.close()

    intake = _intake(cfg, topics, sessions)
    results = _drain(intake, len(values))
    intake.consumer.close()
    assert [r.outcome for r in results] == [Outcome.accepted, Outcome.dead_letter] * 3 + [
        Outcome.accepted]
    assert "deeper than 32 levels" in results[1].reason
    assert "over the 65536 limit" in results[3].reason
    assert results[5].reason == "id: Field required (CloudEvents 1.0)"
    with sessions() as s:
        assert sorted(s.scalars(select(Job.request_id))) == ["ok-1", "ok-2", "ok-3", "ok-4"]

    records = _dead_letters(cfg, topics)
    headers = [dict(r.headers) for r in records]
    assert [h["aif.dlq.id"] for h in headers] == [
        f"{topics.requests}/0/{offset}".encode() for offset in (1, 3, 5)]
    assert [r.value for r in records] == [deep, huge[:DLQ_EXCERPT_BYTES], _event(None)]
    assert headers[1]["aif.dlq.size"] == str(len(huge)).encode()
    assert headers[1]["aif.dlq.truncated"] == str(DLQ_EXCERPT_BYTES).encode()


class _SlowStore(Intake):
    """Stores the batch, then overruns the poll interval before committing, as a loaded box
    once did: the group drops the member and refuses its commit."""

    def _handle(self, records: list) -> StoredBatch:
        stored = super()._handle(records)
        time.sleep(FAST_GROUP["max_poll_interval_ms"] / 1000 + 2)
        return stored


def test_a_commit_the_group_refuses_keeps_what_was_stored_and_the_records_come_again(
    broker: str, topics: Topics, sessions: sessionmaker[Session], acme_key: SigningKey,
    caplog: pytest.LogCaptureFixture,
) -> None:
    cfg = KafkaConfig(bootstrap_servers=broker)
    ensure_topics(cfg, topics.shared(), partitions=1)
    producer = make_producer(cfg)
    value = _event("ok-1")
    producer.send(topics.requests, key=b"k", value=value,
                  headers=sign(value, acme_key.id, acme_key.secret))
    producer.flush()
    producer.close()

    consumer = make_consumer(cfg, group_id=f"{topics.prefix}-g", **FAST_GROUP)
    slow = _SlowStore(consumer, make_producer(cfg), sessions, topics)
    with caplog.at_level(logging.WARNING, logger="aif.orchestrator.intake"):
        first: list[IntakeResult] = _drain(slow, 1)  # no exception: the batch was stored
    slow.consumer.close()
    assert [r.outcome for r in first] == [Outcome.accepted]
    assert "1 records not committed, they will be delivered again" in caplog.text

    intake = _intake(cfg, topics, sessions)  # same group: the offset was never committed
    (again,) = _drain(intake, 1)
    intake.consumer.close()
    assert again.outcome is Outcome.duplicate
    with sessions() as s:
        assert list(s.scalars(select(Job.request_id))) == ["ok-1"]


INTAKE_PROCESS = """
import sys
from aif.db.session import session_factory
from aif.orchestrator.kafka_intake import Intake
from events.bus import KafkaConfig, make_consumer, make_producer
from events.topics import Topics

broker, db_url, prefix = sys.argv[1:]
cfg, topics = KafkaConfig(bootstrap_servers=broker), Topics(prefix)
consumer = make_consumer(cfg, group_id=f"{prefix}-g", max_poll_interval_ms=3000,
                         session_timeout_ms=3000, heartbeat_interval_ms=500)
Intake(consumer, make_producer(cfg), session_factory(db_url), topics).run()
"""


def test_kill_after_the_dead_letter_is_sent_gives_exactly_one_dead_letter(
    broker: str, topics: Topics, sessions: sessionmaker[Session], db_url: str
) -> None:
    """kill -9 between the DLQ send and the offset commit: the record comes again, its
    dead letter is recognised and not sent a second time."""
    cfg = KafkaConfig(bootstrap_servers=broker)
    ensure_topics(cfg, topics.shared(), partitions=1)
    producer = make_producer(cfg)
    producer.send(topics.requests, key=b"k", value=b"\x00poison")
    producer.flush()
    producer.close()
    proc = subprocess.run(
        [sys.executable, "-c", INTAKE_PROCESS, broker, db_url, topics.prefix],
        env={**os.environ, "AIF_FAILPOINTS": "intake.after_dlq"}, timeout=120,
        capture_output=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]
    assert len(_dead_letters(cfg, topics, settle_s=1)) == 1

    intake = _intake(cfg, topics, sessions)  # same group: the offset was never committed
    (again,) = _drain(intake, 1)
    intake.consumer.close()
    assert again.outcome is Outcome.dead_letter
    (record,) = _dead_letters(cfg, topics)
    assert dict(record.headers)["aif.dlq.id"] == f"{topics.requests}/0/0".encode()
    with sessions() as s:
        (row,) = s.scalars(select(DeadLetter)).all()
        assert row.published_at is not None
