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
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum

from kafka import (
    ConsumerRebalanceListener,
    KafkaConsumer,
    KafkaProducer,
    OffsetAndMetadata,
    TopicPartition,
)
from kafka.consumer.fetcher import ConsumerRecord
from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from aif.db.models import Job
from aif.failpoints import failpoint
from aif.orchestrator.states import ALLOWED, transition
from events.bus import ACK_WAIT_S
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
    if event.type not in (FineTuneRequested.TYPE, CancelRequested.TYPE):
        return IntakeResult(Outcome.dead_letter, reason=f"type: unknown event type {event.type!r}")
    if not event.tenant:
        return IntakeResult(Outcome.dead_letter, reason="tenant: every request needs a tenant")
    if event.type == CancelRequested.TYPE:
        return _cancel(session, event, topics)
    try:
        request = FineTuneRequested.model_validate(event.data)
    except ValidationError as exc:
        return IntakeResult(Outcome.dead_letter, reason=describe_validation_error(exc, "data"))

    job_id = job_id_for(event.source, event.id)
    digest = _request_digest(event)
    existing = _stored(session, event.source, event.id)
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
    session.info.setdefault(_PENDING, {})[(event.source, event.id)] = job
    transition(session, job, JobState.validating, topics, reason="request accepted")
    return IntakeResult(Outcome.accepted, job_id)


_PENDING = "aif.intake.pending_jobs"


def _stored(session: Session, source: str, event_id: str) -> Job | None:
    """The job for (source, id): added earlier in this transaction, or already committed.

    Without autoflush, a batch's inserts go to the database together at commit instead of
    one round trip per record before each lookup.
    """
    pending = session.info.get(_PENDING, {}).get((source, event_id))
    if pending is not None and pending in session:  # a rollback expunges it
        return pending
    with session.no_autoflush:
        return session.scalar(
            select(Job).where(Job.request_source == source, Job.request_id == event_id)
        )


def _cancel(session: Session, event: CloudEvent, topics: Topics) -> IntakeResult:
    """Cancel in the store; a worker running the job sees the state change at its next
    heartbeat and stops the stage process."""
    try:
        request = CancelRequested.model_validate(event.data)
    except ValidationError as exc:
        return IntakeResult(Outcome.dead_letter, reason=describe_validation_error(exc, "data"))
    job = session.get(Job, request.job_id)
    if job is None or job.tenant != event.tenant:  # another tenant's job does not exist for you
        return IntakeResult(Outcome.dead_letter, request.job_id,
                            f"data.job_id: no job {request.job_id} for tenant {event.tenant}")
    state = JobState(job.state)
    if JobState.cancelled not in ALLOWED[state]:
        return IntakeResult(Outcome.cancel, job.id, f"not cancelled: job is {state}")
    transition(session, job, JobState.cancelled, topics, request.reason or "cancel requested")
    return IntakeResult(Outcome.cancel, job.id, "cancelled")


def dead_letter_headers(record: ConsumerRecord, reason: str) -> list[tuple[str, bytes]]:
    return [
        ("aif.dlq.reason", reason.encode()),
        ("aif.dlq.topic", record.topic.encode()),
        ("aif.dlq.partition", str(record.partition).encode()),
        ("aif.dlq.offset", str(record.offset).encode()),
        ("aif.dlq.at", datetime.now(UTC).isoformat().encode()),
    ]


class ResumeFromCommitted(ConsumerRebalanceListener):
    """After every rebalance, start each partition at its committed offset or its beginning.

    A memory-only broker that restarts forgets topics and offsets while this consumer still
    remembers a position past the new, empty log's end; without this it would wait there
    and silently skip the first requests sent after the restart. The listener runs on the
    client's IO thread, where blocking calls are not allowed, so it only notes the
    partitions and the poll loop repositions them.
    """

    def __init__(self) -> None:
        self.pending: set[TopicPartition] = set()

    def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        self.pending -= revoked

    def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        self.pending |= assigned

    def reposition(self, consumer: KafkaConsumer) -> None:
        while self.pending:
            tp = self.pending.pop()
            if tp not in consumer.assignment():  # revoked again since
                continue
            committed = consumer.committed(tp)
            if committed is None:
                consumer.seek_to_beginning(tp)
            else:
                consumer.seek(tp, committed)


class Intake:
    """The poll loop. It only validates and stores: long work happens in job workers."""

    def __init__(
        self,
        consumer: KafkaConsumer,
        producer: KafkaProducer,
        sessions: sessionmaker[Session],
        topics: Topics,
        ensure_topics: Callable[[], None] = lambda: None,
    ) -> None:
        self.consumer, self.producer, self.sessions, self.topics = (
            consumer, producer, sessions, topics)
        self.ensure_topics = ensure_topics  # see events.bus.TopicKeeper
        self._last_repair = 0.0
        self.rebalances = ResumeFromCommitted()
        consumer.subscribe([topics.requests], listener=self.rebalances)
        self.stopping = threading.Event()

    def _store(self, records: list[ConsumerRecord]) -> list[IntakeResult]:
        """The whole batch in one transaction: one commit per poll, not per record."""
        try:
            with self.sessions() as session:
                results = [accept(session, r.value, self.topics) for r in records]
                session.commit()
            return results
        except IntegrityError:
            # Another orchestrator stored one of these requests between our check and insert;
            # redo them one by one, each now seeing the other's row as a duplicate.
            results = []
            for record in records:
                with self.sessions() as session:
                    results.append(accept(session, record.value, self.topics))
                    session.commit()
            return results

    def poll_once(self, timeout_ms: int = 500, max_records: int = 500) -> list[IntakeResult]:
        batch = self.consumer.poll(timeout_ms=timeout_ms, max_records=max_records)
        if self.rebalances.pending:
            # Records fetched before repositioning are handled anyway: at worst duplicates.
            self.rebalances.reposition(self.consumer)
        records = [r for rs in batch.values() for r in rs]
        if not records:
            return []
        results = self._store(records)
        failpoint("intake.after_store")
        if any(res.outcome is Outcome.dead_letter for res in results):
            self.ensure_topics()
        dead = [
            self.producer.send(self.topics.dead_letter, key=r.key, value=r.value,
                               headers=dead_letter_headers(r, res.reason))
            for r, res in zip(records, results, strict=True)
            if res.outcome is Outcome.dead_letter
        ]
        for future in dead:
            future.get(timeout=ACK_WAIT_S)
        for r, res in zip(records, results, strict=True):
            if res.outcome is Outcome.dead_letter:
                log.warning("dead-lettered %s[%d]@%d: %s", r.topic, r.partition, r.offset,
                            res.reason)
        # Only now does Kafka learn we are done. A crash before this line re-delivers the
        # batch, and the unique (source, id) constraint turns each record into a duplicate.
        self.consumer.commit({
            TopicPartition(tp.topic, tp.partition): OffsetAndMetadata(rs[-1].offset + 1, "", -1)
            for tp, rs in batch.items()
        })
        return results

    def _repair_if_idle(self) -> None:
        """No partitions assigned: the requests topic may be gone; recreate it, now and then."""
        if self.consumer.assignment() or time.monotonic() - self._last_repair < 5:
            return
        self._last_repair = time.monotonic()
        try:
            self.ensure_topics()
        except Exception as exc:
            log.warning("intake: topics not repaired yet: %s", exc)

    def run(self) -> None:
        while not self.stopping.is_set():
            try:
                self.poll_once()
            except Exception:
                log.exception("intake poll failed; retrying")
                self.stopping.wait(1.0)
            self._repair_if_idle()
