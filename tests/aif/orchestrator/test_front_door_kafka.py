"""Issue #24 point 1 on the real broker and service: a signed request that intake refuses
reaches its tenant. `aif submit --wait` (Kafka, no HTTP) follows the tenant's status topic
and ends with `rejected` and the reason, instead of waiting for a job that never comes; the
operators' dead-letter topic has the record too. A signed record intake cannot even read
reaches the tenant's status topic as `request.refused`, which the partner-side follower reads
by the record's position. No training: intake refuses all three."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from click.testing import Result
from kafka import TopicPartition
from sqlalchemy.orm import Session, sessionmaker
from typer.testing import CliRunner

from aif.cli import app as cli
from aif.service import Service
from aif.settings import Settings
from events.bus import KafkaConfig, make_consumer, make_producer
from events.client import follow
from events.messages import RequestRefused
from events.signing import sign
from events.topics import Topics
from tests.aif.conftest import signing_key
from tests.conftest import free_port


def _submit(args: list[str], env: dict[str, str], timeout_s: float = 90) -> Result:
    """`aif submit ... --wait`, given up on after `timeout_s` (it used to wait an hour)."""
    done: list[Result] = []
    thread = threading.Thread(target=lambda: done.append(CliRunner().invoke(cli, args, env=env)),
                              daemon=True)
    thread.start()
    thread.join(timeout_s)
    assert done, f"aif {' '.join(args)} still waits after {timeout_s:.0f} s"
    return done[0]


def _dead_letter_reasons(cfg: KafkaConfig, topics: Topics, expected: int) -> list[str]:
    consumer = make_consumer(cfg)
    parts = [TopicPartition(topics.dead_letter, p)
             for p in sorted(consumer.partitions_for_topic(topics.dead_letter) or [])]
    consumer.assign(parts)
    consumer.seek_to_beginning(*parts)
    reasons: list[str] = []
    deadline = time.monotonic() + 30
    while len(reasons) < expected and time.monotonic() < deadline:
        for records in consumer.poll(timeout_ms=500).values():
            reasons += [dict(r.headers)["aif.dlq.reason"].decode() for r in records]
    consumer.close()
    return reasons


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_aif_submit_wait_over_kafka_ends_rejected_with_the_reason(
    broker: str, topics: Topics, sessions: sessionmaker[Session], db_url: str, tmp_path: Path,
) -> None:
    settings = Settings(  # type: ignore[call-arg]
        home=tmp_path, database_url=db_url, kafka=KafkaConfig(bootstrap_servers=broker),
        topic_prefix=topics.prefix, embedded_broker=False, web_port=free_port(),
        max_poll_interval_ms=3000, session_timeout_ms=3000,
    )
    key = signing_key(sessions, "acme")
    env = {"AIF_KAFKA__BOOTSTRAP_SERVERS": broker, "AIF_TOPIC_PREFIX": topics.prefix,
           "AIF_HOME": str(tmp_path / "cli"), "AIF_SIGNING_KEY_ID": key.id,
           "AIF_SIGNING_SECRET": key.secret}
    cases = {
        ("grid-ticket-routin",): "recipe: no such recipe. Did you mean 'grid-ticket-routing'?",
        ("grid-ticket-routing", "--train-file", "/etc/passwd"):
            "data.train_file: outside the tenant's data root",
    }
    with Service(settings, web=False):
        for args, reason in cases.items():
            done = _submit(["submit", *args, "--tenant", "acme", "--wait"], env)
            said = " ".join(done.output.split())  # rich wraps long lines
            assert done.exit_code == 1, said
            assert "submitted job" in said and "job finished: rejected" in said, said
            assert f"rejected {reason}" in said, said
            assert "root:" not in said
        told = _unreadable_record_told(settings, key.id, key.secret)
        reasons = _dead_letter_reasons(settings.kafka, settings.topics, len(cases) + 1)
    assert told.reason.startswith("value is not JSON: ") and told.tenant == "acme", told
    assert (told.request_source, told.request_id) == (None, None)
    assert sorted(r.split(" ", 1)[0] for r in reasons) == [
        "data.train_file:", "recipe:", "value"]


def _unreadable_record_told(settings: Settings, key_id: str, secret: str) -> RequestRefused:
    """Send a signed record that is no CloudEvent and follow the tenant's topics, as a
    partner would, for the refusal of the record at the position its send reported."""
    value = b"not a CloudEvent, and no request id to follow"
    producer = make_producer(settings.kafka)
    try:
        sent = producer.send(settings.topics.requests, value,
                             headers=sign(value, key_id, secret)).get(timeout=30)
    finally:
        producer.close()
    record = f"{sent.topic}/{sent.partition}/{sent.offset}"
    for event in follow(settings.kafka, settings.topics, "acme",
                        lambda ev: ev.subject == record, timeout_s=60):
        if event is not None:
            assert isinstance(event, RequestRefused)
            return event
    raise AssertionError("unreachable: follow raises TimeoutError")
