"""Intake on the real embedded broker: offsets, dead letters, duplicates, ordering."""

from __future__ import annotations

import time

from kafka import TopicPartition
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from aif.db.models import Job
from aif.orchestrator.intake import Intake, Outcome
from events.bus import KafkaConfig, ensure_topics, envelope, make_consumer, make_producer
from events.messages import FineTuneRequested
from events.topics import Topics

FAST_GROUP = {"max_poll_interval_ms": 3000, "session_timeout_ms": 3000,
              "heartbeat_interval_ms": 500}


def _intake(cfg: KafkaConfig, topics: Topics, sessions: sessionmaker[Session]) -> Intake:
    consumer = make_consumer(cfg, group_id=f"{topics.prefix}-g", **FAST_GROUP)
    return Intake(consumer, make_producer(cfg), sessions, topics)


def _drain(intake: Intake, expected: int, timeout: float = 60) -> list:
    results: list = []
    deadline = time.monotonic() + timeout
    while len(results) < expected and time.monotonic() < deadline:
        results += intake.poll_once()
    return results


def test_poison_is_dead_lettered_and_the_partition_moves_on(
    broker: str, topics: Topics, sessions: sessionmaker[Session]
) -> None:
    cfg = KafkaConfig(bootstrap_servers=broker)
    ensure_topics(cfg, topics.all(), partitions=1)
    producer = make_producer(cfg)
    good = envelope(FineTuneRequested(recipe="grid-ticket-routing"), source="urn:t",
                    tenant="acme", event_id="ok-1")
    producer.send(topics.requests, key=b"k", value=b"\x00poison")
    for _ in range(100):
        producer.send(topics.requests, key=b"k", value=good.to_bytes())
    producer.flush()

    intake = _intake(cfg, topics, sessions)
    results = _drain(intake, 101)
    intake.consumer.close()
    assert [r.outcome for r in results] == [Outcome.dead_letter, Outcome.accepted] + [
        Outcome.duplicate] * 99
    with sessions() as s:
        assert s.scalar(select(func.count()).select_from(Job)) == 1

    dlq = make_consumer(cfg)
    tp = TopicPartition(topics.dead_letter, 0)
    dlq.assign([tp])
    dlq.seek_to_beginning(tp)
    records = [r for batch in dlq.poll(timeout_ms=5000).values() for r in batch]
    dlq.close()
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
