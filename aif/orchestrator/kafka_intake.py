"""Kafka intake: the poll loop that stores each batch of request records in one transaction
and commits their offsets to Kafka only afterwards.

Each record goes through `intake.accept` (verify, screen, de-duplicate, store); the batch is
stored as one unit, or record by record in savepoints when that fails, so one poison record
never blocks a partition. Its new dead letters are forwarded before the offsets are
committed, and a crash anywhere re-delivers the batch as duplicates.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from datetime import UTC, datetime

from kafka import (
    ConsumerRebalanceListener,
    KafkaConsumer,
    KafkaProducer,
    OffsetAndMetadata,
    TopicPartition,
)
from kafka.consumer.fetcher import ConsumerRecord
from kafka.errors import CommitFailedError, RebalanceInProgressError
from sqlalchemy import update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from aif.db import appends
from aif.db.models import DeadLetter
from aif.orchestrator.admission import Admission
from aif.orchestrator.dead_letters import dead_letter_copy, dlq_id, note_dead_letter
from aif.orchestrator.intake import IntakeResult, Outcome, accept, look_up_requests, signer
from aif.orchestrator.references import References
from aif.settings import QuotaLimits
from events.bus import Outgoing, send_and_wait
from events.topics import Topics
from stagefiles.failpoints import failpoint

log = logging.getLogger(__name__)


@dataclass
class StoredBatch:
    """Each record's result, and the dead letters still to forward: id -> (record, reason)."""

    results: list[IntakeResult]
    forward: dict[int, tuple[ConsumerRecord, str]]


def _isolated(session: Session, record: ConsumerRecord, topics: Topics,
              admission: Admission | None, require_signed: bool) -> IntakeResult:
    """`accept` in a savepoint: a bug with one record dead-letters it, not its neighbours."""
    def once() -> IntakeResult:
        with session.begin_nested():
            return accept(session, record.value, topics, admission,
                          headers=record.headers or (), require_signed=require_signed)

    try:
        try:
            return once()
        except IntegrityError:
            # Another orchestrator stored this request since our check; now it is a duplicate.
            return once()
    except Exception as exc:
        log.exception("intake: a record failed unexpectedly")
        tenant = _signer_of(session, record)
        return IntakeResult(Outcome.dead_letter, reason=f"internal-error: {type(exc).__name__}",
                            tenant=tenant, notify=tenant is not None)


def _signer_of(session: Session, record: ConsumerRecord) -> str | None:
    """The tenant whose key signed a record that failed unexpectedly, so that it hears of it
    too; None where nothing proves one (or the check itself fails)."""
    try:
        with session.begin_nested():
            signed = signer(session, record.value, record.headers or ())
    except Exception:
        return None
    return signed and signed[0]


def store_batch(sessions: sessionmaker[Session], records: list[ConsumerRecord], topics: Topics,
                admission: Admission | None = None, *, require_signed: bool = True
                ) -> StoredBatch:
    """The whole batch in one transaction: one commit per poll, and each record ends as a
    job, a duplicate or a dead letter, whatever its bytes.

    First as one unit: the batch's requests are looked up in one query, its audit rows and
    status events go in as one multi-row INSERT per table (`aif.db.appends`) and its other
    inserts together at commit. Should that raise (a bug with one record, another
    orchestrator storing the same request first), the batch is stored again with one
    savepoint per record, which confines the failure to its record at the cost of a flush
    and a lookup per record.
    """
    try:
        return _store(sessions, records, topics, admission, require_signed, isolate=False)
    except Exception as exc:
        log.warning("intake: batch of %d failed as a whole (%s); storing record by record",
                    len(records), type(exc).__name__)
        return _store(sessions, records, topics, admission, require_signed, isolate=True)


def _store(sessions: sessionmaker[Session], records: list[ConsumerRecord], topics: Topics,
           admission: Admission | None, require_signed: bool, *, isolate: bool) -> StoredBatch:
    with sessions() as session:
        connection = session.connection()
        if connection.dialect.name == "sqlite":
            # pysqlite begins a transaction only at the first write: without this the first
            # savepoint would be the outermost transaction and releasing it would commit.
            # IMMEDIATE takes the write lock now, so a writer in another thread makes this
            # wait (busy timeout) instead of failing the batch when its reads turn into writes.
            connection.exec_driver_sql("BEGIN IMMEDIATE")
        if isolate:
            stored = _each(session, records, topics, admission, require_signed, isolate=True)
        else:  # one lookup, and the audit rows and status events inserted together
            look_up_requests(session, [(r.value, r.headers or ()) for r in records])
            with appends.together(session):
                stored = _each(session, records, topics, admission, require_signed,
                               isolate=False)
        session.commit()
    return stored


def _each(session: Session, records: list[ConsumerRecord], topics: Topics,
          admission: Admission | None, require_signed: bool, *, isolate: bool) -> StoredBatch:
    """Each record through `accept` (in a savepoint of its own when `isolate`), and the
    dead letter of each refused one."""
    stored = StoredBatch([], {})
    for record in records:
        if isolate:
            result = _isolated(session, record, topics, admission, require_signed)
        else:
            result = accept(session, record.value, topics, admission,
                            headers=record.headers or (), require_signed=require_signed)
        stored.results.append(result)
        if result.outcome is Outcome.dead_letter:
            with session.begin_nested() if isolate else nullcontext():
                dead_letter_id = note_dead_letter(
                    session, record, result.reason, result.tenant,
                    status_topic=(topics.status(result.tenant)
                                  if result.notify and result.tenant else None),
                    request=result.request)
            if dead_letter_id is not None:
                stored.forward[dead_letter_id] = (record, result.reason)
    return stored


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
        ensure_topics: Callable[..., None] = lambda also=(): None,
        max_processes: int | None = None,
        require_signed_events: bool = True,
        references: References | None = None,
        quota_defaults: QuotaLimits | None = None,
    ) -> None:
        """`max_processes`: the most train/eval processes a request may ask for (None: any).
        `require_signed_events`: dead-letter unsigned records (False: a trusted network).
        `references`: the site's data reference rules (None: left to the worker).
        `quota_defaults`: the site's quota defaults (None: quotas left to the worker)."""
        self.consumer, self.producer, self.sessions, self.topics = (
            consumer, producer, sessions, topics)
        self.require_signed_events = require_signed_events
        self.admission = Admission(max_processes, references, quota_defaults)
        # events.bus.TopicKeeper.ensure: the shared topics, and those named in `also`
        self.ensure_topics = ensure_topics
        self._last_repair = 0.0
        self.rebalances = ResumeFromCommitted()
        consumer.subscribe([topics.requests], listener=self.rebalances)
        self.stopping = threading.Event()

    def poll_once(self, timeout_ms: int = 500, max_records: int = 500) -> list[IntakeResult]:
        batch = self.consumer.poll(timeout_ms=timeout_ms, max_records=max_records)
        if self.rebalances.pending:
            # Records fetched before repositioning are handled anyway: at worst duplicates.
            self.rebalances.reposition(self.consumer)
        records = [r for rs in batch.values() for r in rs]
        if not records:
            return []
        try:
            stored = self._handle(records)
        except Exception:
            # Fetch the batch again at the next poll instead of skipping past it.
            for tp, rs in batch.items():
                if tp in self.consumer.assignment():
                    self.consumer.seek(tp, rs[0].offset)
            raise
        # Only now does Kafka learn we are done. A crash before this line re-delivers the
        # batch: the unique (tenant, source, id) constraint makes each request a duplicate, and
        # each dead letter already forwarded is not sent again.
        try:
            self.consumer.commit({
                TopicPartition(tp.topic, tp.partition): OffsetAndMetadata(rs[-1].offset + 1,
                                                                          "", -1)
                for tp, rs in batch.items()
            })
        except (CommitFailedError, RebalanceInProgressError) as exc:
            # The group moved on while the batch was stored (a slow store overran the poll
            # interval, or a member joined): whoever owns the partitions next gets these
            # records again, and each is then a duplicate. What was stored stands.
            log.warning("intake: offsets of %d records not committed, they will be delivered "
                        "again and dropped as duplicates: %s", len(records), exc)
            return stored.results
        failpoint("intake.after_commit")
        return stored.results

    def _handle(self, records: list[ConsumerRecord]) -> StoredBatch:
        """Store the batch, then forward its new dead letters and mark them published."""
        stored = store_batch(self.sessions, records, self.topics, self.admission,
                             require_signed=self.require_signed_events)
        failpoint("intake.after_store")
        for r, res in zip(records, stored.results, strict=True):
            if res.outcome is Outcome.dead_letter:
                log.warning("dead-lettered %s: %s", dlq_id(r), res.reason)
        self._tenant_topics(stored.results)
        if not stored.forward:
            return stored
        self.ensure_topics()
        acked, failed = send_and_wait(self.producer, (
            Outgoing(self.topics.dead_letter, *dead_letter_copy(record, reason))
            for record, reason in stored.forward.values()))
        done = [dl_id for dl_id, ok in zip(stored.forward, acked, strict=False) if ok]
        with self.sessions() as session:
            session.execute(update(DeadLetter).where(DeadLetter.id.in_(done))
                            .values(published_at=datetime.now(UTC)))
            session.commit()
        if failed:
            raise failed
        failpoint("intake.after_dlq")
        return stored

    def _tenant_topics(self, results: list[IntakeResult]) -> None:
        """Both topics of each tenant that has a job now, so that a follower (which reads
        status and models topics together) is not left waiting for a models topic that only
        a model would create: a job refused here, or before training, never makes one. The
        relay creates the status topic in any case, so a failure here only waits."""
        tenants = sorted({r.tenant for r in results if r.tenant and r.job_id})
        if not tenants:
            return
        try:
            self.ensure_topics(also=[name for tenant in tenants
                                     for name in self.topics.of_tenant(tenant)])
        except Exception as exc:
            log.warning("intake: tenants' topics not created yet: %s", exc)

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
