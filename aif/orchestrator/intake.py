"""Intake of one request record: verify, validate, de-duplicate and store it (`accept`).

A record is either stored as a job, recognised as a duplicate, or dead-lettered with the
reason, whatever its bytes. Any of the three lets the offset advance (the poll loop that
stores batches and commits offsets afterwards is `kafka_intake`), so one poison message
never blocks a partition. Reasons name the field, the rule and at most a position: never
what the record says.

Who sent a record is what its signature proves (`events.signing`): the tenant of the signing
key, checked before the value is even parsed. The event's `tenant` attribute may only repeat
it. Without a signature the attribute is believed only where the service is told its network
is trusted (`require_signed=False`); a signed record is verified either way.

No record of a tenant its signature proved is refused where only the operators see it.
A fine-tuning request that names itself becomes, besides its dead letter, a job `validating`
then `rejected` with the reason, in the same transaction, so its status events go to the
tenant's status topic and `GET /v1/jobs/{id}` (the id `job_id_for` gives) says why. The checks
are `admission`'s, the same `POST /v1/jobs` runs before it publishes anything. Any other
refused record of a proven tenant (unreadable, unnamed, a cancel, another type, a reused id)
is marked `notify`: its dead letter goes with a `request.refused` event to the tenant's status
topic (`dead_letters.note_dead_letter`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum

from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.orm import Session

from aif import audit
from aif.db.models import Job, Tenant
from aif.db.session import transaction_cache
from aif.jobstore.commands import ERASED, cancel, reject, rejected_at_intake
from aif.jobstore.transitions import transition
from aif.orchestrator.admission import (
    Admission,
    Refusal,
    Rule,
    forget_quota,
    read_event,
    screen,
)
from aif.tenants import signing_secret
from events.envelope import (
    MAX_EVENT_BYTES,
    CloudEvent,
    EnvelopeError,
    check_json_depth,
    describe_validation_error,
    job_id_for,
)
from events.messages import PUBLIC_LABEL, CancelRequested, FineTuneRequested
from events.signing import KEY_ID_HEADER, SIGNATURE_HEADER, SignatureError, signing_headers, verify
from events.states import JobState
from events.topics import Topics


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
    notify: bool = False
    """A dead letter of a record the signature proved `tenant`'s, and no job of it says why:
    the tenant's status topic hears of it (`events.messages.RequestRefused`)."""
    request: tuple[str, str] | None = None
    """(source, id) of the refused request, where its envelope could be read."""


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
    key = _signing_key(session, key_id)
    if key is None:
        raise SignatureError(f"signature: {KEY_ID_HEADER} names no active signing key "
                             "(unknown or revoked)")
    tenant, secret = key
    if not verify(raw or b"", signature, secret):
        raise SignatureError(f"signature: {SIGNATURE_HEADER} is not the HMAC-SHA256 of the "
                             "record value under the key's secret")
    return tenant, key_id


def _signing_key(session: Session, key_id: str) -> tuple[str, str] | None:
    """`signing_secret`, read once per transaction: a batch's records share a few keys."""
    keys = transaction_cache(session, "aif.intake.signing_keys")
    if key_id not in keys:
        with session.no_autoflush:
            keys[key_id] = signing_secret(session, key_id)
    return keys[key_id]


def _erased(session: Session, tenant: str | None) -> bool:
    """Whether `tenant` was erased, read once per tenant and transaction."""
    if not tenant:
        return False
    erased = transaction_cache(session, "aif.intake.erased")
    if tenant not in erased:
        with session.no_autoflush:
            row = session.get(Tenant, tenant)
        erased[tenant] = row is not None and row.erased_at is not None
    return erased[tenant]


def _claimed_tenant(raw: bytes | None) -> str | None:
    """The `tenant` attribute of a record whose signature failed, only to tell an erased
    tenant's replayed event (its keys are gone) from a forgery; never believed otherwise."""
    try:
        return CloudEvent.from_bytes(raw).tenant
    except EnvelopeError:
        return None


def _refused(reason: str, tenant: str | None, *, proven: bool, event: CloudEvent | None = None,
             job_id: str | None = None) -> IntakeResult:
    """A dead letter; `proven`: the signature proved `tenant`, whose status topic hears of
    it (no job of the tenant says why)."""
    return IntakeResult(Outcome.dead_letter, job_id, reason, tenant, notify=proven,
                        request=None if event is None else (event.source, event.id))


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
    proven = signed_by is not None  # (an erased tenant's keys are gone: no erased tenant)
    event, refused = read_event(raw), None
    if isinstance(event, Refusal):
        refused, event = event, _oversized_envelope(raw, event) if proven else None
        if event is None:
            return _refused(refused.reason, signed_by, proven=proven)
    if event.type not in (FineTuneRequested.TYPE, CancelRequested.TYPE):
        return _refused("type: unknown event type", signed_by, proven=proven, event=event)
    if proven and event.tenant not in (None, signed_by):
        return _refused("tenant-mismatch: the tenant attribute names another tenant than the "
                        "signing key's", signed_by, proven=proven, event=event)
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
        if refused is not None:  # only a signed record is read when oversized
            return _refused(refused.reason, tenant, proven=proven, event=event)
        return _cancel(session, event, tenant, topics, actor, proven=proven)

    job_id = job_id_for(tenant, event.source, event.id)
    # An oversized event was read without its data: its digest is of the bytes.
    digest = _request_digest(event) if refused is None else audit.sha256(raw) or ""
    request_key = (tenant, event.source, event.id)
    existing = _stored(session, *request_key)
    if existing is not None:
        if existing.request_sha256 != digest:
            return _refused("id: an event of this tenant with this source and id was already "
                            "received with a different payload", tenant, proven=proven,
                            event=event, job_id=existing.id)
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
_LOOKED_UP = "aif.intake.looked_up"
RequestKey = tuple[str, str, str]
"""(tenant, source, id): what makes a request the same request."""


def look_up_requests(session: Session, records: Iterable[tuple[bytes | None, Headers]]
                     ) -> None:
    """Find, in one query for the whole batch, the stored jobs of the requests these records
    appear to carry, so that `accept` asks the database per record only for a request this
    guess missed. The guess reads the JSON's source and id and the tenant of the key the
    headers name (else the tenant attribute); it checks nothing: `accept` still does."""
    found: dict[RequestKey, Job | None] = {}
    ids: dict[tuple[str, str], list[str]] = {}  # a query per (tenant, source): a batch has few
    for raw, headers in records:
        if key := _apparent_key(session, raw, headers):
            found[key] = None
            ids.setdefault(key[:2], []).append(key[2])
    with session.no_autoflush:
        for (tenant, source), of_source in ids.items():
            for start in range(0, len(of_source), 500):  # under every bound-parameter limit
                # Equality on the unique index's first columns: an index search on SQLite,
                # where a row-value IN scans the table.
                found.update(((tenant, source, job.request_id), job) for job in session.scalars(
                    select(Job).where(Job.tenant == tenant, Job.request_source == source,
                                      Job.request_id.in_(of_source[start:start + 500]))))
    transaction_cache(session, _LOOKED_UP).update(found)


def _apparent_key(session: Session, raw: bytes | None, headers: Headers) -> RequestKey | None:
    if raw is None or len(raw) > MAX_EVENT_BYTES:
        return None
    try:
        value = json.loads(raw)
        signed = signing_headers(headers)
        key = _signing_key(session, signed[0]) if signed else None
    except (ValueError, RecursionError, SignatureError):
        return None
    if not isinstance(value, dict):
        return None
    tenant, source, event_id = (key[0] if key else value.get("tenant"), value.get("source"),
                                value.get("id"))
    if not (_storable(tenant, 63) and _storable(source, 500) and _storable(event_id, 200)):
        return None
    return tenant, source, event_id


def _storable(part: object, limit: int) -> bool:
    """Only what the envelope lets through goes into the query: a NUL or a lone surrogate
    would fail it on PostgreSQL, and with it the batch's one-transaction path."""
    if not isinstance(part, str) or not 0 < len(part) <= limit or "\x00" in part:
        return False
    try:
        part.encode()
    except UnicodeEncodeError:
        return False
    return True


def _stored(session: Session, tenant: str, source: str, event_id: str) -> Job | None:
    """The job for (tenant, source, id): added earlier in this transaction, or committed.

    Without autoflush, a batch's inserts go to the database together at commit instead of
    one round trip per record before each lookup; a request `look_up_requests` looked up
    in this transaction costs none.
    """
    key = (tenant, source, event_id)
    pending = session.info.get(_PENDING, {}).get(key)
    if pending is not None and pending in session:  # a rollback expunges it
        return pending
    looked_up = transaction_cache(session, _LOOKED_UP)
    if key in looked_up:
        return looked_up[key]
    with session.no_autoflush:
        return session.scalar(select(Job).where(
            Job.tenant == tenant, Job.request_source == source, Job.request_id == event_id))


def _cancel(session: Session, event: CloudEvent, tenant: str, topics: Topics, actor: str,
            *, proven: bool) -> IntakeResult:
    """Cancel in the store (`commands.cancel`) a job of the record's own tenant; `proven`:
    the signature proved the tenant, which hears of a refusal."""
    try:
        request = CancelRequested.model_validate(event.data)
    except ValidationError as exc:
        return _refused(describe_validation_error(exc, "data", CancelRequested), tenant,
                        proven=proven, event=event)
    job = session.get(Job, request.job_id)
    if job is None or job.tenant != tenant:  # another tenant's job does not exist for you
        return _refused("data.job_id: no such job for this tenant", tenant, proven=proven,
                        event=event, job_id=request.job_id)
    if not cancel(session, job, topics, request.reason or "cancel requested", actor,
                  event_id=event.id, payload_sha256=audit.sha256(event.to_bytes())):
        return IntakeResult(Outcome.cancel, job.id, f"not cancelled: job is {job.state}",
                            tenant)
    forget_quota(session, tenant)  # it may have held one of the tenant's concurrent jobs
    return IntakeResult(Outcome.cancel, job.id, "cancelled", tenant)
