"""An erased tenant's stored, validly signed request replayed on the real broker creates
nothing: intake dead-letters it as `tenant-erased` and keeps none of its bytes."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from aif.db.models import DeadLetter, Job
from aif.erasure import erase_tenant
from aif.orchestrator.intake import Outcome
from aif.orchestrator.kafka_intake import Intake
from aif.settings import Settings
from events.bus import KafkaConfig, ensure_topics, envelope, make_consumer, make_producer
from events.messages import FineTuneRequested
from events.signing import SigningKey, sign
from events.topics import Topics
from tests.aif.orchestrator.test_intake_kafka import FAST_GROUP, _dead_letters, _drain


@pytest.mark.store
def test_a_replayed_signed_request_of_an_erased_tenant_creates_nothing(
    broker: str, topics: Topics, sessions: sessionmaker[Session], acme_key: SigningKey,
    tmp_path: Path,
) -> None:
    cfg = KafkaConfig(bootstrap_servers=broker)
    ensure_topics(cfg, topics.shared(), partitions=1)
    producer = make_producer(cfg)
    value = envelope(FineTuneRequested(recipe="grid-ticket-routing"), source="urn:acme",
                     tenant="acme", event_id="req-1").to_bytes()
    headers = sign(value, acme_key.id, acme_key.secret)
    intake = Intake(make_consumer(cfg, group_id=f"{topics.prefix}-g", **FAST_GROUP),
                    make_producer(cfg), sessions, topics)
    producer.send(topics.requests, key=b"k", value=value, headers=headers).get(30)
    (first,) = _drain(intake, 1)
    assert first.outcome is Outcome.accepted

    erase_tenant(sessions, Settings(home=tmp_path / "home", topic_prefix=topics.prefix), "acme")
    producer.send(topics.requests, key=b"k", value=value, headers=headers).get(30)  # replayed
    # The replay; the stored request itself may come again too (a rebalance while erasing).
    again = _drain(intake, 1)
    intake.consumer.close()

    assert again and all(r.outcome is Outcome.dead_letter and r.reason.startswith(
        "tenant-erased") for r in again)
    with sessions() as s:
        assert s.scalars(select(Job)).all() == []
        letters = s.scalars(select(DeadLetter)).all()
    assert letters and all(d.value is None and d.tenant is None and d.size == len(value)
                           for d in letters)
    records = _dead_letters(cfg, topics)
    assert len(records) == len(letters)
    for forwarded in records:  # nothing of the erased request goes on
        assert forwarded.value is None
        assert dict(forwarded.headers)["aif.dlq.reason"].startswith(b"tenant-erased")
