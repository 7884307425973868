"""Kafka intake: verify, validate, de-duplicate and store requests; commit offsets afterwards.

A record is either stored as a job, recognised as a duplicate, or dead-lettered with the
reason, whatever its bytes. Any of the three lets the offset advance, so one poison message
never blocks a partition, and nothing is committed to Kafka before the database has it.
Reasons name the field, the rule and at most a position: never what the record says.

Who sent a record is what its signature proves (`events.signing`): the tenant of the signing
key, checked before the value is even parsed. The event's `tenant` attribute may only repeat
it. Without a signature the attribute is believed only where the service is told its network
is trusted (`require_signed=False`); a signed record is verified either way.

A fine-tuning request of a tenant its signature proved is never refused where only the
operators see it: besides its dead letter it becomes a job, `validating` then `rejected` with
the reason, in the same transaction, so its status events go to the tenant's status topic and
`GET /v1/jobs/{id}` (the id `job_id_for` gives) says why. The checks are `admission`'s, the
same `POST /v1/jobs` runs before it publishes anything.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from collections.abc import Callable, Iterable
from contextlib import nullcontext
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
from kafka.errors import CommitFailedError, RebalanceInProgressError
from pydantic import ValidationError
from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from aif import audit
from aif.db.models import DeadLetter, Job, Tenant
from aif.jobstore.commands import ERASED, cancel, reject, rejected_at_intake
from aif.jobstore.transitions import transition
from aif.orchestrator.admission import Admission, Refusal, Rule, read_event, screen
from aif.orchestrator.dead_letters import dead_letter_copy, dlq_id, note_dead_letter
from aif.orchestrator.references import References
from aif.settings import QuotaLimits
from aif.tenants import signing_secret
from events.bus import Outgoing, send_and_wait
from events.envelope import (
    CloudEvent,
    EnvelopeError,
    check_json_depth,
    describe_validation_error,
    job_id_for,
)
from events.failpoints import failpoint
from events.messages import PUBLIC_LABEL, CancelRequested, FineTuneRequested
from events.signing import KEY_ID_HEADER, SIGNATURE_HEADER, SignatureError, signing_headers, verify
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
    tenant: str | None = None  # once the signature (or a trusted network) established it


def _request_digest(event: CloudEvent) -> str:
    return hashlib.sha256(json.dumps(event.data, sort_keys=True).encode()).hexdigest()


Headers = Iterable[tuple[str, bytes | None]]
"""A record's headers as kafka-python gives them."""


def signer(session: Session, raw: bytes | None, headers: Headers) -> tuple[str, str] | None:
    """(tenant, key id) of the signing key that signed `raw`; None for a record without
    signing headers.

    Raises SignatureError for a malformed signature, an unknown or revoked key, or an HMAC
    that does not match the value.
    """
    signed = signing_headers(headers)
    if signed is None:
        return None
    key_id, signature = signed
    with session.no_autoflush:
        key = signing_secret(session, key_id)
    if key is None:
        raise SignatureError(f"signature: {KEY_ID_HEADER} names no active signing key "
                             "(unknown or revoked)")
    tenant, secret = key
    if not verify(raw or b"", signature, secret):
        raise SignatureError(f"signature: {SIGNATURE_HEADER} is not the HMAC-SHA256 of the "
                             "record value under the key's secret")
    return tenant, key_id


def _erased(session: Session, tenant: str | None) -> bool:
    with session.no_autoflush:
        row = session.get(Tenant, tenant) if tenant else None
    return row is not None and row.erased_at is not None


def _claimed_tenant(raw: bytes | None) -> str | None:
    """The `tenant` attribute of a record whose signature failed, only to tell an erased
    tenant's replayed event (its keys are gone) from a forgery; never believed otherwise."""
    try:
        return CloudEvent.from_bytes(raw).tenant
    except EnvelopeError:
        return None


def _erased_refusal() -> IntakeResult:
    return IntakeResult(Outcome.dead_letter, reason=(
        f"{ERASED}: the tenant was erased; its events create nothing"))


def accept(session: Session, raw: bytes | None, topics: Topics,
           admission: Admission | None = None, *, headers: Headers = (),
           require_signed: bool = True) -> IntakeResult:
    """Turn one record (value and headers) into a stored job, in one transaction that the
    caller commits.

    `admission` refuses requests that can never train or are over a quota (see
    `admission.screen`); without it (callers that store requests directly) only the schema
    is checked here and the worker's validation does the rest.
    `require_signed=False` believes an unsigned event's `tenant` attribute (a trusted network).
    """
    try:
        signed = signer(session, raw, headers)
    except SignatureError as exc:
        if _erased(session, _claimed_tenant(raw)):
            return _erased_refusal()
        return IntakeResult(Outcome.dead_letter, reason=str(exc))
    signed_by, key_id = signed or (None, None)
    if signed_by is None and require_signed:
        return IntakeResult(Outcome.dead_letter, reason=(
            f"signature: unsigned record; this service requires the {KEY_ID_HEADER} and "
            f"{SIGNATURE_HEADER} headers"))
    event, refused = read_event(raw), None
    if isinstance(event, Refusal):
        refused, event = event, _oversized_envelope(raw, event) if signed_by else None
        if event is None:
            return IntakeResult(Outcome.dead_letter, reason=refused.reason, tenant=signed_by)
    if event.type not in (FineTuneRequested.TYPE, CancelRequested.TYPE):
        return IntakeResult(Outcome.dead_letter, reason="type: unknown event type",
                            tenant=signed_by)
    if signed_by is not None and event.tenant not in (None, signed_by):
        return IntakeResult(Outcome.dead_letter, tenant=signed_by, reason=(
            "tenant-mismatch: the tenant attribute names another tenant than the signing "
            "key's"))
    tenant = signed_by or event.tenant
    if not tenant:
        return IntakeResult(Outcome.dead_letter, reason=(
            "tenant: every request needs a tenant (the tenant attribute or a signature)"))
    if _erased(session, tenant):
        return _erased_refusal()
    if event.tenant is None:
        event = event.model_copy(update={"tenant": tenant})  # stored as the key proved it
    actor = audit.signing_actor(key_id) if key_id else "unsigned"
    if event.type == CancelRequested.TYPE:
        if refused is not None:
            return IntakeResult(Outcome.dead_letter, reason=refused.reason, tenant=tenant)
        return _cancel(session, event, tenant, topics, actor)

    job_id = job_id_for(tenant, event.source, event.id)
    # An oversized event was read without its data: its digest is of the bytes.
    digest = _request_digest(event) if refused is None else audit.sha256(raw) or ""
    request_key = (tenant, event.source, event.id)
    existing = _stored(session, *request_key)
    if existing is not None:
        if existing.request_sha256 != digest:
            return IntakeResult(
                Outcome.dead_letter,
                existing.id,
                "id: an event of this tenant with this source and id was already received "
                "with a different payload",
                tenant,
            )
        with session.no_autoflush:
            refused_here = rejected_at_intake(existing)
        if refused_here:  # sent again, or re-delivered before its dead letter went out
            return IntakeResult(Outcome.dead_letter, existing.id, existing.reason, tenant)
        return IntakeResult(Outcome.duplicate, existing.id, tenant=tenant)
    request = refused or screen(session, event, tenant, admission)
    if isinstance(request, Refusal):
        if signed_by is None:  # the tenant is not proven: only the operators hear of it
            return IntakeResult(Outcome.dead_letter, reason=request.reason, tenant=tenant)
        job = _add_job(session, event, tenant, digest, request.request, public=False)
        reject(session, job, topics, request.reason)
        return IntakeResult(Outcome.dead_letter, job_id, request.reason, tenant)
    job = _add_job(session, event, tenant, digest, request,
                   public=request.labels.get(PUBLIC_LABEL) == "true")
    audit.record(session, audit.Action.submit, actor=actor, tenant=tenant, job_id=job_id,
                 event_id=event.id, payload_sha256=audit.sha256(raw),
                 request_source=event.source)
    transition(session, job, JobState.validating, topics, reason="request accepted")
    return IntakeResult(Outcome.accepted, job_id, tenant=tenant)


READ_OVERSIZED_BYTES = 1024 * 1024
"""A signed event over the size limit but at most this large (Kafka's default largest
record) is read for its attributes only, so that its tenant hears why it was refused."""


def _oversized_envelope(raw: bytes | None, refused: Refusal) -> CloudEvent | None:
    """The attributes of an event refused for its size alone, its data left out; None if it
    is refused for anything else too, or too large to read at all."""
    if refused.rule is not Rule.size or raw is None or len(raw) > READ_OVERSIZED_BYTES:
        return None
    try:
        check_json_depth(raw)
        attributes = json.loads(raw)
    except (EnvelopeError, ValueError):
        return None
    if not isinstance(attributes, dict):
        return None
    attributes.pop("data", None)
    event = read_event(json.dumps(attributes).encode())
    return None if isinstance(event, Refusal) else event


def _add_job(session: Session, event: CloudEvent, tenant: str, digest: str,
             request: FineTuneRequested | None, *, public: bool) -> Job:
    """The job row of a request, added to the session; `request` None: its data was refused
    and is not kept (the dead letter has it, for the operators)."""
    stored = event.model_dump(mode="json")
    if request is None:
        stored["data"] = {}
    job = Job(
        id=job_id_for(tenant, event.source, event.id),
        tenant=tenant,
        request_source=event.source,
        request_id=event.id,
        request_sha256=digest,
        request=stored,
        recipe_name=request and (request.recipe or (
            request.recipe_inline and request.recipe_inline.name)),
        state=None,
        reason="",
        public=public,
    )
    session.add(job)
    session.info.setdefault(_PENDING, {})[(tenant, event.source, event.id)] = job
    return job


_PENDING = "aif.intake.pending_jobs"


def _stored(session: Session, tenant: str, source: str, event_id: str) -> Job | None:
    """The job for (tenant, source, id): added earlier in this transaction, or committed.

    Without autoflush, a batch's inserts go to the database together at commit instead of
    one round trip per record before each lookup.
    """
    pending = session.info.get(_PENDING, {}).get((tenant, source, event_id))
    if pending is not None and pending in session:  # a rollback expunges it
        return pending
    with session.no_autoflush:
        return session.scalar(select(Job).where(
            Job.tenant == tenant, Job.request_source == source, Job.request_id == event_id))


def _cancel(session: Session, event: CloudEvent, tenant: str, topics: Topics, actor: str
            ) -> IntakeResult:
    """Cancel in the store (`commands.cancel`) a job of the record's own tenant."""
    try:
        request = CancelRequested.model_validate(event.data)
    except ValidationError as exc:
        return IntakeResult(Outcome.dead_letter, tenant=tenant,
                            reason=describe_validation_error(exc, "data", CancelRequested))
    job = session.get(Job, request.job_id)
    if job is None or job.tenant != tenant:  # another tenant's job does not exist for you
        return IntakeResult(Outcome.dead_letter, request.job_id,
                            "data.job_id: no such job for this tenant", tenant)
    if not cancel(session, job, topics, request.reason or "cancel requested", actor,
                  event_id=event.id, payload_sha256=audit.sha256(event.to_bytes())):
        return IntakeResult(Outcome.cancel, job.id, f"not cancelled: job is {job.state}",
                            tenant)
    return IntakeResult(Outcome.cancel, job.id, "cancelled", tenant)


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
        return IntakeResult(Outcome.dead_letter, reason=f"internal-error: {type(exc).__name__}")


def store_batch(sessions: sessionmaker[Session], records: list[ConsumerRecord], topics: Topics,
                admission: Admission | None = None, *, require_signed: bool = True
                ) -> StoredBatch:
    """The whole batch in one transaction: one commit per poll, and each record ends as a
    job, a duplicate or a dead letter, whatever its bytes.

    First as one unit, so the inserts go to the database together at commit. Should that
    raise (a bug with one record, another orchestrator storing the same request first), the
    batch is stored again with one savepoint per record, which confines the failure to its
    record at the cost of a flush per record.
    """
    try:
        return _store(sessions, records, topics, admission, require_signed, isolate=False)
    except Exception as exc:
        log.warning("intake: batch of %d failed as a whole (%s); storing record by record",
                    len(records), type(exc).__name__)
        return _store(sessions, records, topics, admission, require_signed, isolate=True)


def _store(sessions: sessionmaker[Session], records: list[ConsumerRecord], topics: Topics,
           admission: Admission | None, require_signed: bool, *, isolate: bool) -> StoredBatch:
    results: list[IntakeResult] = []
    forward: dict[int, tuple[ConsumerRecord, str]] = {}
    with sessions() as session:
        connection = session.connection()
        if connection.dialect.name == "sqlite":
            # pysqlite begins a transaction only at the first write: without this the first
            # savepoint would be the outermost transaction and releasing it would commit.
            # IMMEDIATE takes the write lock now, so a writer in another thread makes this
            # wait (busy timeout) instead of failing the batch when its reads turn into writes.
            connection.exec_driver_sql("BEGIN IMMEDIATE")
        for record in records:
            if isolate:
                result = _isolated(session, record, topics, admission, require_signed)
            else:
                result = accept(session, record.value, topics, admission,
                                headers=record.headers or (), require_signed=require_signed)
            results.append(result)
            if result.outcome is Outcome.dead_letter:
                with session.begin_nested() if isolate else nullcontext():
                    dead_letter_id = note_dead_letter(session, record, result.reason,
                                                      result.tenant)
                if dead_letter_id is not None:
                    forward[dead_letter_id] = (record, result.reason)
        session.commit()
    return StoredBatch(results, forward)


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
