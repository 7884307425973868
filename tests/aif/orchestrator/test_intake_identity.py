"""A partner's identity is what its signature proves, never what the event body claims.

Decisions against a real database (SQLite and PostgreSQL), then the same rules on the real
embedded broker: every refused record is one dead letter whose reason names the rule.
"""

from __future__ import annotations

import pytest
from kafka.consumer.fetcher import ConsumerRecord
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from aif.db.models import Job
from aif.orchestrator.intake import Outcome, accept
from aif.orchestrator.kafka_intake import store_batch
from aif.tenants import revoke
from events.bus import KafkaConfig, ensure_topics, envelope, make_producer, publish
from events.envelope import CloudEvent, job_id_for
from events.messages import CancelRequested, FineTuneRequested
from events.signing import (
    KEY_ID_HEADER,
    SIGNATURE_HEADER,
    SignatureError,
    SigningKey,
    sign,
    signature,
    signing_headers,
    verify,
)
from events.states import JobState
from events.topics import Topics
from tests.aif.conftest import signing_key
from tests.aif.orchestrator.test_intake_kafka import _dead_letters, _drain, _intake

TOPICS = Topics("t")
REQUEST = FineTuneRequested(recipe="grid-ticket-routing")


@pytest.fixture
def evil_key(sessions: sessionmaker[Session]) -> SigningKey:
    """A second tenant, the one that tries to pass for acme."""
    return signing_key(sessions, "evil")


def _request(tenant: str | None = "acme", event_id: str = "req-1", **labels: str) -> bytes:
    data = REQUEST.model_copy(update={"labels": labels})
    return envelope(data, source="urn:acme:mlops", tenant=tenant, event_id=event_id).to_bytes()


def _accept(sessions: sessionmaker[Session], raw: bytes, key: SigningKey | None = None,
            headers: list[tuple[str, bytes]] | None = None, require_signed: bool = True):
    if key is not None:
        headers = sign(raw, key.id, key.secret)
    with sessions() as s:
        result = accept(s, raw, TOPICS, headers=headers or [], require_signed=require_signed)
        s.commit()
    return result


def _job(sessions: sessionmaker[Session], job_id: str | None) -> Job:
    with sessions() as s:
        return s.get_one(Job, job_id)


def _jobs(sessions: sessionmaker[Session]) -> int:
    with sessions() as s:
        return s.scalar(select(func.count()).select_from(Job))


def test_sign_and_verify_cover_the_exact_value_bytes() -> None:
    headers = dict(sign(b'{"a": 1}', "k1", "s3cret"))
    assert headers == {KEY_ID_HEADER: b"k1",
                       SIGNATURE_HEADER: signature(b'{"a": 1}', "s3cret").encode()}
    assert headers[SIGNATURE_HEADER].startswith(b"hmac-sha256=")
    assert verify(b'{"a": 1}', headers[SIGNATURE_HEADER], "s3cret")
    assert not verify(b'{"a":1}', headers[SIGNATURE_HEADER], "s3cret")  # same JSON, other bytes
    assert not verify(b'{"a": 1}', headers[SIGNATURE_HEADER], "other")
    assert "s3cret" not in repr(SigningKey("k1", "s3cret"))


@pytest.mark.parametrize(("headers", "rule"), [
    ([(KEY_ID_HEADER, b"k1")], f"{SIGNATURE_HEADER} header missing"),
    ([(SIGNATURE_HEADER, b"hmac-sha256=" + b"0" * 64)], f"{KEY_ID_HEADER} header missing"),
    ([(KEY_ID_HEADER, b"k1"), (KEY_ID_HEADER, b"k2"), (SIGNATURE_HEADER, b"x")],
     f"{KEY_ID_HEADER} header given more than once"),
    ([(KEY_ID_HEADER, b"k\x001"), (SIGNATURE_HEADER, b"x")], f"{KEY_ID_HEADER} must be"),
    ([(KEY_ID_HEADER, b"k1"), (SIGNATURE_HEADER, b"sha1=abc")], f"{SIGNATURE_HEADER} must read"),
    ([(KEY_ID_HEADER, b"k1"), (SIGNATURE_HEADER, b"hmac-sha256=" + b"0" * 64 + b"\n")],
     f"{SIGNATURE_HEADER} must read"),
    ([(KEY_ID_HEADER, b"k1"), (SIGNATURE_HEADER, None)], f"{SIGNATURE_HEADER} must read"),
])
def test_malformed_signing_headers_name_the_rule(headers: list, rule: str) -> None:
    with pytest.raises(SignatureError, match=f"^signature: {rule}"):
        signing_headers(headers)
    assert signing_headers([("other", b"x")]) is None


def test_the_signing_keys_tenant_is_the_jobs_tenant(
    sessions: sessionmaker[Session], acme_key: SigningKey,
) -> None:
    result = _accept(sessions, _request(tenant=None), acme_key)
    assert result.outcome is Outcome.accepted
    assert result.job_id == job_id_for("acme", "urn:acme:mlops", "req-1")
    job = _job(sessions, result.job_id)
    assert (job.tenant, job.request["tenant"]) == ("acme", "acme")
    assert _accept(sessions, _request(event_id="req-2"), acme_key).outcome is Outcome.accepted


@pytest.mark.parametrize("require_signed", [True, False])
def test_a_bad_signature_is_refused_even_where_unsigned_events_are_trusted(
    sessions: sessionmaker[Session], acme_key: SigningKey, evil_key: SigningKey,
    require_signed: bool,
) -> None:
    raw = _request()
    cases = {
        "signature: aif-signature is not the HMAC-SHA256 of the record value":
            sign(raw, acme_key.id, evil_key.secret),
        "signature: aif-signature is not the HMAC-SHA256": sign(raw + b" ", acme_key.id,
                                                                 acme_key.secret),
        "signature: aif-key-id names no active signing key": sign(raw, "nosuchkey", "x"),
        "signature: aif-signature header missing": [(KEY_ID_HEADER, acme_key.id.encode())],
    }
    for reason, headers in cases.items():
        result = _accept(sessions, raw, headers=headers, require_signed=require_signed)
        assert result.outcome is Outcome.dead_letter and result.reason.startswith(reason)
    assert _jobs(sessions) == 0


def test_a_revoked_key_signs_nothing(sessions: sessionmaker[Session], acme_key: SigningKey,
                                     ) -> None:
    with sessions() as s:
        revoke(s, "acme", acme_key.id)
        s.commit()
    result = _accept(sessions, _request(), acme_key)
    assert result.reason == ("signature: aif-key-id names no active signing key "
                             "(unknown or revoked)")


def test_unsigned_records_are_refused_unless_the_network_is_trusted(
    sessions: sessionmaker[Session],
) -> None:
    refused = _accept(sessions, _request())
    assert refused.outcome is Outcome.dead_letter
    assert refused.reason.startswith("signature: unsigned record")
    trusted = _accept(sessions, _request(tenant="beta"), require_signed=False)
    assert trusted.outcome is Outcome.accepted and _job(sessions, trusted.job_id).tenant == "beta"
    nameless = _accept(sessions, _request(tenant=None, event_id="r2"), require_signed=False)
    assert nameless.reason.startswith("tenant: every request needs a tenant")


def test_a_forged_tenant_attribute_is_a_tenant_mismatch(
    sessions: sessionmaker[Session], acme_key: SigningKey, evil_key: SigningKey,
) -> None:
    result = _accept(sessions, _request(tenant="acme"), evil_key)
    assert result.outcome is Outcome.dead_letter
    assert result.reason.startswith("tenant-mismatch: ")
    assert "acme" not in result.reason and "evil" not in result.reason
    assert _jobs(sessions) == 0


@pytest.mark.store
def test_another_tenant_cannot_squat_a_source_and_id(
    sessions: sessionmaker[Session], acme_key: SigningKey, evil_key: SigningKey,
) -> None:
    """The issue's case: evil sent acme's `source` and `id` first and took the job id, and
    acme's real request was refused as a different payload. Now each has its own job."""
    squat = _accept(sessions, _request(tenant=None, team="evil"), evil_key)
    real = _accept(sessions, _request(tenant="acme", team="acme"), acme_key)
    assert (squat.outcome, real.outcome) == (Outcome.accepted, Outcome.accepted)
    assert squat.job_id != real.job_id
    assert (_job(sessions, squat.job_id).tenant, _job(sessions, real.job_id).tenant) == (
        "evil", "acme")
    assert real.job_id == job_id_for("acme", "urn:acme:mlops", "req-1")


@pytest.mark.store
def test_replaying_a_stored_event_gives_the_same_job(
    sessions: sessionmaker[Session], acme_key: SigningKey,
) -> None:
    raw = _request()
    first = _accept(sessions, raw, acme_key)
    again = _accept(sessions, raw, acme_key)
    rotated = _accept(sessions, raw, signing_key(sessions, "acme"))  # a newer key of acme
    stored = _job(sessions, first.job_id).request  # the event as the job store kept it
    replayed = CloudEvent.model_validate(stored).to_bytes()
    from_store = _accept(sessions, replayed, acme_key)
    assert [r.outcome for r in (first, again, rotated, from_store)] == [
        Outcome.accepted, Outcome.duplicate, Outcome.duplicate, Outcome.duplicate]
    assert {r.job_id for r in (first, again, rotated, from_store)} == {first.job_id}
    assert _jobs(sessions) == 1


def _cancel(job_id: str, tenant: str | None) -> bytes:
    return envelope(CancelRequested(job_id=job_id), source="urn:x", tenant=tenant).to_bytes()


def test_a_forged_cancel_leaves_the_job_alone_and_reveals_nothing(
    sessions: sessionmaker[Session], acme_key: SigningKey, evil_key: SigningKey,
) -> None:
    job_id = _accept(sessions, _request(), acme_key).job_id
    assert job_id is not None
    as_acme = _accept(sessions, _cancel(job_id, tenant="acme"), evil_key)
    assert as_acme.outcome is Outcome.dead_letter
    assert as_acme.reason.startswith("tenant-mismatch: ")
    as_itself = _accept(sessions, _cancel(job_id, tenant=None), evil_key)
    unknown = _accept(sessions, _cancel("no-such-job", tenant=None), evil_key)
    assert as_itself.outcome is unknown.outcome is Outcome.dead_letter
    assert as_itself.reason == unknown.reason == "data.job_id: no such job for this tenant"
    unsigned = _accept(sessions, _cancel(job_id, tenant="acme"))
    assert unsigned.reason.startswith("signature: unsigned record")
    assert _job(sessions, job_id).state == JobState.validating
    mine = _accept(sessions, _cancel(job_id, tenant=None), acme_key)
    assert (mine.outcome, mine.reason) == (Outcome.cancel, "cancelled")


MARKER = "s3cr3t-marker"


def test_signature_reasons_quote_no_header_or_value(
    sessions: sessionmaker[Session], acme_key: SigningKey,
) -> None:
    raw = _request(tenant=MARKER)
    headers = [
        [(KEY_ID_HEADER, MARKER.encode()), (SIGNATURE_HEADER, MARKER.encode())],
        [(KEY_ID_HEADER, (MARKER * 10).encode()), (SIGNATURE_HEADER, b"x")],
        sign(raw, MARKER, MARKER),
        sign(raw, acme_key.id, MARKER),
        sign(raw, acme_key.id, acme_key.secret),  # tenant-mismatch
        [(KEY_ID_HEADER, acme_key.id.encode())],
    ]
    records = [ConsumerRecord(TOPICS.requests, 0, -1, i, 1, 0, b"k", raw, h, None, 1,
                              len(raw), 0) for i, h in enumerate(headers)]
    stored = store_batch(sessions, records, TOPICS)
    assert [r.outcome for r in stored.results] == [Outcome.dead_letter] * len(records)
    for result in stored.results:
        assert MARKER not in result.reason and acme_key.secret not in result.reason


def _send(cfg: KafkaConfig, topic: str, records: list[tuple[bytes, list]]) -> None:
    producer = make_producer(cfg)
    for value, headers in records:
        producer.send(topic, key=b"k", value=value, headers=headers)
    producer.flush()
    producer.close()


def test_on_the_broker_only_a_valid_signature_makes_a_job(
    broker: str, topics: Topics, sessions: sessionmaker[Session], acme_key: SigningKey,
    evil_key: SigningKey,
) -> None:
    cfg = KafkaConfig(bootstrap_servers=broker)
    ensure_topics(cfg, topics.shared(), partitions=1)
    forged, bad, unknown, unsigned = (_request(event_id=f"r{i}") for i in range(4))
    _send(cfg, topics.requests, [
        (forged, sign(forged, evil_key.id, evil_key.secret)),
        (bad, sign(bad, acme_key.id, evil_key.secret)),
        (unknown, sign(unknown, "nosuchkey", acme_key.secret)),
        (unsigned, []),
    ])
    producer = make_producer(cfg)
    good = envelope(REQUEST, source="urn:acme:mlops", tenant=None, event_id="good")
    publish(producer, topics.requests, good, key="k", signing_key=acme_key)
    producer.close()

    intake = _intake(cfg, topics, sessions)
    results = _drain(intake, 5)
    intake.consumer.close()
    assert [r.outcome for r in results] == [Outcome.dead_letter] * 4 + [Outcome.accepted]
    assert _job(sessions, results[4].job_id).tenant == "acme"
    reasons = [dict(r.headers)["aif.dlq.reason"].decode() for r in _dead_letters(cfg, topics)]
    assert [reason.split(":")[0] for reason in reasons] == [
        "tenant-mismatch", "signature", "signature", "signature"]
    assert "HMAC-SHA256" in reasons[1] and "no active signing key" in reasons[2]
    assert reasons[3].startswith("signature: unsigned record")
    assert _jobs(sessions) == 1


def test_on_a_trusted_broker_unsigned_requests_are_accepted(
    broker: str, topics: Topics, sessions: sessionmaker[Session], acme_key: SigningKey,
) -> None:
    cfg = KafkaConfig(bootstrap_servers=broker)
    ensure_topics(cfg, topics.shared(), partitions=1)
    unsigned, badly_signed = _request(event_id="u1"), _request(event_id="u2")
    _send(cfg, topics.requests, [(unsigned, []),
                                 (badly_signed, sign(badly_signed, acme_key.id, "wrong"))])
    intake = _intake(cfg, topics, sessions, require_signed_events=False)
    results = _drain(intake, 2)
    intake.consumer.close()
    assert [r.outcome for r in results] == [Outcome.accepted, Outcome.dead_letter]
    assert results[1].reason.startswith("signature: aif-signature is not the HMAC")
    assert _job(sessions, results[0].job_id).tenant == "acme"
