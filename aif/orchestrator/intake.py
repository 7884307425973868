"""Kafka intake: validate, de-duplicate and store requests; commit offsets only afterwards.

A record is either stored as a job, recognised as a duplicate, or dead-lettered with the
reason. Any of the three lets the offset advance, so one poison message never blocks a
partition, and nothing is committed to Kafka before the database has it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum

from kafka import KafkaConsumer, KafkaProducer, OffsetAndMetadata, TopicPartition
from kafka.consumer.fetcher import ConsumerRecord
from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from aif.db.models import Job
from aif.orchestrator.states import transition
from events.envelope import CloudEvent, EnvelopeError, describe_validation_error, job_id_for
from events.messages import CancelRequested, FineTuneRequested
from events.states import JobState
from events.topics import Topics

log = logging.getLogger(__name__)


class Outcome(StrEnum):
    accepted = "accepted"
    duplicate = "duplicate"
    cancel = "cancel"
    dead_letter = "dead_letter"


@dataclass(frozen=True)
class IntakeResult:
    outcome: Outcome
    job_id: str | None = None
    reason: str = ""


def _request_digest(event: CloudEvent) -> str:
    return hashlib.sha256(json.dumps(event.data, sort_keys=True).encode()).hexdigest()


def accept(session: Session, raw: bytes | None, topics: Topics) -> IntakeResult:
    """Turn one record value into a stored job, in one transaction that the caller commits."""
    try:
        event = CloudEvent.from_bytes(raw)
    except EnvelopeError as exc:
        return IntakeResult(Outcome.dead_letter, reason=str(exc))
    if event.type == CancelRequested.TYPE:
        return IntakeResult(Outcome.cancel, reason="cancel requests are handled by the worker")
    if event.type != FineTuneRequested.TYPE:
        return IntakeResult(Outcome.dead_letter, reason=f"type: unknown event type {event.type!r}")
    if not event.tenant:
        return IntakeResult(Outcome.dead_letter, reason="tenant: every request needs a tenant")
    try:
        request = FineTuneRequested.model_validate(event.data)
    except ValidationError as exc:
        return IntakeResult(Outcome.dead_letter, reason=describe_validation_error(exc, "data"))

    job_id = job_id_for(event.source, event.id)
    digest = _request_digest(event)
    existing = session.scalar(
        select(Job).where(Job.request_source == event.source, Job.request_id == event.id)
    )
    if existing is not None:
        if existing.request_sha256 != digest:
            return IntakeResult(
                Outcome.dead_letter,
                existing.id,
                f"id: event {event.id!r} from {event.source!r} was already accepted with a "
                "different payload",
            )
        return IntakeResult(Outcome.duplicate, existing.id)
    job = Job(
        id=job_id,
        tenant=event.tenant,
        request_source=event.source,
        request_id=event.id,
        request_sha256=digest,
        request=event.model_dump(mode="json"),
        recipe_name=request.recipe or (request.recipe_inline and request.recipe_inline.name),
        state=None,
        reason="",
    )
    session.add(job)
    transition(session, job, JobState.validating, topics, reason="request accepted")
    return IntakeResult(Outcome.accepted, job_id)


def dead_letter_headers(record: ConsumerRecord, reason: str) -> list[tuple[str, bytes]]:
    return [
        ("aif.dlq.reason", reason.encode()),
        ("aif.dlq.topic", record.topic.encode()),
        ("aif.dlq.partition", str(record.partition).encode()),
        ("aif.dlq.offset", str(record.offset).encode()),
        ("aif.dlq.at", datetime.now(UTC).isoformat().encode()),
    ]


class Intake:
    """The poll loop. It only validates and stores: long work happens in job workers."""

    def __init__(
        self,
        consumer: KafkaConsumer,
        producer: KafkaProducer,
        sessions: sessionmaker[Session],
        topics: Topics,
    ) -> None:
        self.consumer, self.producer, self.sessions, self.topics = (
            consumer, producer, sessions, topics)
        self.stopping = threading.Event()

    def handle(self, record: ConsumerRecord) -> IntakeResult:
        with self.sessions() as session:
            try:
                result = accept(session, record.value, self.topics)
                session.commit()
            except IntegrityError:
                # Another orchestrator stored the same request between our check and insert.
                session.rollback()
                result = accept(session, record.value, self.topics)
        if result.outcome is Outcome.dead_letter:
            self.producer.send(
                self.topics.dead_letter,
                key=record.key,
                value=record.value,
                headers=dead_letter_headers(record, result.reason),
            ).get(timeout=30)
            log.warning("dead-lettered %s[%d]@%d: %s", record.topic, record.partition,
                        record.offset, result.reason)
        return result

    def poll_once(self, timeout_ms: int = 500) -> list[IntakeResult]:
        results = []
        batch = self.consumer.poll(timeout_ms=timeout_ms)
        for tp, records in batch.items():
            for record in records:
                results.append(self.handle(record))
                # Commit per record: a crash re-delivers at most the record in flight, and
                # the unique (source, id) constraint turns that into a duplicate.
                self.consumer.commit(
                    {TopicPartition(tp.topic, tp.partition): OffsetAndMetadata(
                        record.offset + 1, "", -1)}
                )
        return results

    def run(self) -> None:
        while not self.stopping.is_set():
            try:
                self.poll_once()
            except Exception:
                log.exception("intake poll failed; retrying")
                self.stopping.wait(1.0)
