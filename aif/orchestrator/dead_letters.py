"""Dead letters of the intake: each refused record is stored with its batch and forwarded once.

A row keyed by the record's topic, partition and offset is written in the batch's transaction,
so a batch re-delivered after a crash finds it and sends nothing again unless the first send
never completed. What is forwarded carries headers saying why and where from; a record too
large to forward goes as its first bytes with its original size. Where the signature proved
whose record it is and no job says why, the tenant's status topic gets a `request.refused`
event in the same transaction, once per dead letter.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime

from kafka.consumer.fetcher import ConsumerRecord
from sqlalchemy import select
from sqlalchemy.orm import Session

from aif import audit
from aif.db.models import DeadLetter
from aif.jobstore.commands import ERASED
from aif.jobstore.outbox import answer_envelope, enqueue
from events.messages import RequestRefused

DLQ_MAX_COPY_BYTES = 256 * 1024
"""A refused value up to this size is forwarded whole; Kafka's default limits are 1 MiB."""
DLQ_EXCERPT_BYTES = 16 * 1024
"""A larger one is forwarded as its first bytes, and only these are kept in the database."""


def _kept(value: bytes | None, reason: str) -> bytes | None:
    return None if reason.startswith(ERASED) else value


def _fingerprint(record: ConsumerRecord) -> str:
    digest = hashlib.sha256(str(record.timestamp).encode())
    for part in (record.key, record.value):
        digest.update(b"-" if part is None else b"+%d:%s" % (len(part), part))
    return digest.hexdigest()


def dlq_id(record: ConsumerRecord) -> str:
    """topic/partition/offset: the record a dead letter stands for, in logs and headers."""
    return f"{record.topic}/{record.partition}/{record.offset}"


def note_dead_letter(session: Session, record: ConsumerRecord, reason: str,
                     tenant: str | None = None, *, status_topic: str | None = None,
                     request: tuple[str, str] | None = None) -> int | None:
    """Write or find the record's dead letter, audited once; its id if it still has to be
    forwarded. `tenant`: whose record it is, where the signature proved it. `status_topic`:
    the tenant's, told of a new dead letter by a `request.refused` event naming `request`
    (source, id) where the record's envelope could be read."""
    fingerprint = _fingerprint(record)
    with session.no_autoflush:
        row = session.scalar(select(DeadLetter).where(
            DeadLetter.source_topic == record.topic,
            DeadLetter.source_partition == record.partition,
            DeadLetter.source_offset == record.offset))
    if row is not None and row.fingerprint == fingerprint:
        return None if row.published_at is not None else row.id
    value = _kept(record.value, reason)
    fields = {"fingerprint": fingerprint, "reason": reason, "created_at": datetime.now(UTC),
              "size": len(record.value or b""), "published_at": None, "tenant": tenant,
              "value": None if value is None else value[:DLQ_EXCERPT_BYTES]}
    if row is None:  # else an older record at this offset, before the broker lost its log
        row = DeadLetter(source_topic=record.topic, source_partition=record.partition,
                         source_offset=record.offset)
        session.add(row)
    for name, field_value in fields.items():
        setattr(row, name, field_value)
    session.flush()
    audit.record(session, audit.Action.refuse, actor=audit.SERVICE, tenant=tenant,
                 event_id=dlq_id(record), payload_sha256=audit.sha256(record.value),
                 reason=reason.split(":", 1)[0])
    if status_topic is not None and tenant is not None:
        source, request_id = request or (None, None)
        refused = RequestRefused(
            tenant=tenant, reason=reason, record=dlq_id(record), at=row.created_at,
            record_sha256=hashlib.sha256(record.value or b"").hexdigest(),
            request_source=source, request_id=request_id)
        enqueue(session, status_topic, dlq_id(record), answer_envelope(
            refused, tenant, dlq_id(record), event_id=f"{dlq_id(record)}:{fingerprint[:16]}"))
    return row.id


def dead_letter_copy(record: ConsumerRecord, reason: str
                     ) -> tuple[bytes | None, bytes | None, list[tuple[str, bytes]]]:
    """Key, value and headers forwarded to the dead-letter topic: the original bytes, or
    their first `DLQ_EXCERPT_BYTES` when the record is too large to send again."""
    key, value = record.key, _kept(record.value, reason)
    size = len(record.value or b"")
    headers = [
        ("aif.dlq.id", dlq_id(record).encode()),
        ("aif.dlq.reason", reason.encode()),
        ("aif.dlq.topic", record.topic.encode()),
        ("aif.dlq.partition", str(record.partition).encode()),
        ("aif.dlq.offset", str(record.offset).encode()),
        ("aif.dlq.size", str(size).encode()),
        ("aif.dlq.at", datetime.now(UTC).isoformat().encode()),
    ]
    if size + len(key or b"") > DLQ_MAX_COPY_BYTES:
        key = key and key[:DLQ_EXCERPT_BYTES]
        value = value and value[:DLQ_EXCERPT_BYTES]
        headers.append(("aif.dlq.truncated", str(len(value or b"")).encode()))
    return key, value, headers
