"""Intake decisions against a real database (SQLite and PostgreSQL).

Every record is signed by tenant acme (the `acme_key` fixture); the signature and tenant rules
themselves are tested in test_intake_identity.py.
"""

import json

import pytest
from kafka.consumer.fetcher import ConsumerRecord
from sqlalchemy import event as sa_event
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, sessionmaker

from aif import audit
from aif.db.models import DeadLetter, Job, Outbox
from aif.jobstore.transitions import transition
from aif.orchestrator import intake
from aif.orchestrator.dead_letters import DLQ_EXCERPT_BYTES, DLQ_MAX_COPY_BYTES, dead_letter_copy
from aif.orchestrator.intake import Outcome, accept
from aif.orchestrator.kafka_intake import store_batch
from aif.quotas import set_quota
from aif.settings import QuotaLimits
from events.bus import envelope
from events.envelope import job_id_for
from events.messages import CancelRequested, FineTuneRequested, JobStatusChanged, RequestRefused
from events.signing import SigningKey, sign
from events.states import JobState
from events.topics import Topics

pytestmark = pytest.mark.store  # de-duplication and the batch's savepoints

TOPICS = Topics("t")


def _request(**data: object) -> bytes:
    payload = {"recipe": "grid-ticket-routing", **data}
    ev = envelope(FineTuneRequested.model_validate(payload), source="urn:test", tenant="acme",
                  event_id="req-1")
    return ev.to_bytes()


def _signed(raw: bytes | None, key: SigningKey) -> list[tuple[str, bytes]]:
    return sign(raw or b"", key.id, key.secret)


def _accept(sessions: sessionmaker[Session], raw: bytes | None, key: SigningKey):
    with sessions() as s:
        result = accept(s, raw, TOPICS, headers=_signed(raw, key))
        s.commit()
    return result


def _jobs(sessions: sessionmaker[Session]) -> int:
    with sessions() as s:
        return s.scalar(select(func.count()).select_from(Job))


def test_valid_request_becomes_a_validating_job_with_a_status_event(
    sessions: sessionmaker[Session], acme_key: SigningKey,
) -> None:
    result = _accept(sessions, _request(), acme_key)
    assert result.outcome is Outcome.accepted
    assert result.job_id == job_id_for("acme", "urn:test", "req-1")
    with sessions() as s:
        job = s.get_one(Job, result.job_id)
        assert (job.state, job.tenant, job.recipe_name) == (
            JobState.validating, "acme", "grid-ticket-routing")
        (row,) = s.scalars(select(Outbox)).all()
        assert row.topic == TOPICS.status("acme") == "t.tenant.acme.status" and row.key == job.id


@pytest.mark.parametrize(("labels", "public"), [({"public": "true"}, True),
                                               ({"public": "yes"}, False), ({}, False)])
def test_the_public_label_publishes_the_job(
    sessions: sessionmaker[Session], acme_key: SigningKey, labels: dict, public: bool,
) -> None:
    result = _accept(sessions, _request(labels=labels), acme_key)
    with sessions() as s:
        assert s.get_one(Job, result.job_id).public is public


def test_same_event_a_hundred_times_is_one_job(
    sessions: sessionmaker[Session], acme_key: SigningKey,
) -> None:
    raw = _request()
    outcomes = [_accept(sessions, raw, acme_key).outcome for _ in range(100)]
    assert outcomes[0] is Outcome.accepted
    assert set(outcomes[1:]) == {Outcome.duplicate}
    assert _jobs(sessions) == 1


def test_same_id_with_other_payload_is_a_conflict(
    sessions: sessionmaker[Session], acme_key: SigningKey,
) -> None:
    _accept(sessions, _request(), acme_key)
    result = _accept(sessions, _request(labels={"team": "b"}), acme_key)
    assert result.outcome is Outcome.dead_letter
    assert "different payload" in result.reason
    assert _jobs(sessions) == 1


def test_repeats_within_one_batch_transaction_are_recognised(
    sessions: sessionmaker[Session], acme_key: SigningKey,
) -> None:
    """A poll's records share one transaction: the second copy must see the first, unflushed."""
    with sessions() as s:
        outcomes = [accept(s, raw, TOPICS, headers=_signed(raw, acme_key)).outcome
                    for raw in (_request(), _request(), _request(labels={"team": "b"}))]
        s.commit()
    assert outcomes == [Outcome.accepted, Outcome.duplicate, Outcome.dead_letter]
    assert _jobs(sessions) == 1


def test_a_rolled_back_request_is_accepted_again(
    sessions: sessionmaker[Session], acme_key: SigningKey,
) -> None:
    raw = _request()
    headers = _signed(raw, acme_key)
    with sessions() as s:
        assert accept(s, raw, TOPICS, headers=headers).outcome is Outcome.accepted
        s.rollback()
        assert accept(s, raw, TOPICS, headers=headers).outcome is Outcome.accepted
        s.commit()
    assert _jobs(sessions) == 1


def _event(**fields: object) -> bytes:
    base = {"specversion": "1.0", "id": "e1", "source": "urn:test", "tenant": "acme",
            "type": FineTuneRequested.TYPE, "data": {"recipe": "grid-ticket-routing"}}
    base.update(fields)
    return json.dumps(base).encode()


def test_bad_requests_are_dead_lettered_with_the_field(
    sessions: sessionmaker[Session], acme_key: SigningKey,
) -> None:
    """Each is one dead letter; a request with an id whose data is refused is also a job of
    its (signing) tenant, `rejected` with the same reason, that keeps none of the data."""
    cases = [
        (b"\xff\xfe", "not JSON", False),
        (_event(type="com.example.other"), "unknown event type", False),
        (_event(tenant="Not A Tenant"), "tenant: String should match pattern", False),
        (_event(id="e2", data={"recipe": "grid-ticket-routing",
                               "overrides": {"max_steps": 0}}), "data.overrides.max_steps", True),
        (_event(id="e3", data={"recipe": "grid-ticket-routing", "surprise": 1}), "data.<key>",
         True),
        (_event(id="e4", data={"recipe": "grid-ticket-routing",
                               "overrides": {"learning_rte": 1e-4}}),
         "data.overrides.<key> (did you mean 'learning_rate'?)", True),
        (_event(id=None), "id: Input should be a valid string", False),
        (_event(id="a\x00b"), "id: String should match pattern", False),
        (b'{"source": "urn:test", "type": "x"}', "id: Field required (CloudEvents 1.0)", False),
        (b"[" * 10_000, "deeper than 32 levels", False),
    ]
    for raw, fragment, leaves_job in cases:
        result = _accept(sessions, raw, acme_key)
        assert result.outcome is Outcome.dead_letter
        assert fragment in result.reason
        assert (result.job_id is not None) is leaves_job, result
        if leaves_job:
            with sessions() as s:
                job = s.get_one(Job, result.job_id)
                assert (job.tenant, job.state, job.reason) == (
                    "acme", JobState.rejected, result.reason)
                assert job.request["data"] == {} and job.recipe_name is None
    assert _jobs(sessions) == 3


def _cancel(job_id: str, tenant: str = "acme") -> bytes:
    return envelope(CancelRequested(job_id=job_id, reason="changed my mind"),
                    source="urn:test", tenant=tenant).to_bytes()


def test_cancel_moves_a_waiting_job_to_cancelled(
    sessions: sessionmaker[Session], acme_key: SigningKey,
) -> None:
    job_id = _accept(sessions, _request(), acme_key).job_id
    result = _accept(sessions, _cancel(job_id), acme_key)
    assert (result.outcome, result.reason) == (Outcome.cancel, "cancelled")
    with sessions() as s:
        job = s.get_one(Job, job_id)
        assert (job.state, job.reason) == (JobState.cancelled, "changed my mind")
    again = _accept(sessions, _cancel(job_id), acme_key)
    assert again.reason == "not cancelled: job is cancelled"


def test_cancel_of_an_unknown_job_is_dead_lettered(
    sessions: sessionmaker[Session], acme_key: SigningKey,
) -> None:
    """Another tenant's cancel: see test_intake_identity.py."""
    job_id = _accept(sessions, _request(), acme_key).job_id
    result = _accept(sessions, _cancel("no-such-job"), acme_key)
    assert (result.outcome, result.reason) == (
        Outcome.dead_letter, "data.job_id: no such job for this tenant")
    with sessions() as s:
        assert s.get_one(Job, job_id).state == JobState.validating


def record(value: bytes | None, offset: int, timestamp: int = 1,
           headers: list[tuple[str, bytes]] | None = None) -> ConsumerRecord:
    """A fetched record; unsigned unless `headers` are given."""
    return ConsumerRecord(TOPICS.requests, 0, -1, offset, timestamp, 0, b"k", value,
                          headers or [], None, 1, len(value or b""), 0)


def test_an_unexpected_error_dead_letters_that_record_and_spares_its_neighbours(
    sessions: sessionmaker[Session], acme_key: SigningKey, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The job half-added by the failing record is rolled back with its savepoint only."""
    real = intake.transition

    def transition(session, job, *args, **kwargs):
        if job.request_id == "boom":
            raise RuntimeError("bug")
        return real(session, job, *args, **kwargs)

    monkeypatch.setattr(intake, "transition", transition)
    values = [_event(id="a"), _event(id="boom"), _event(id="c")]
    stored = store_batch(sessions, [record(v, i, headers=_signed(v, acme_key))
                                    for i, v in enumerate(values)], TOPICS)
    assert [r.outcome for r in stored.results] == [
        Outcome.accepted, Outcome.dead_letter, Outcome.accepted]
    assert stored.results[1].reason == "internal-error: RuntimeError"
    with sessions() as s:
        assert sorted(s.scalars(select(Job.request_id))) == ["a", "c"]
        (dead,) = s.scalars(select(DeadLetter)).all()
        assert (dead.source_offset, dead.reason) == (1, "internal-error: RuntimeError")
        # Its tenant, whose key signed it, hears of it too (#24.1).
        assert dead.tenant == "acme"
        told = [json.loads(r.payload) for r in s.scalars(select(Outbox).where(
            Outbox.topic == TOPICS.status("acme")))]
        assert [(e["type"], e["data"]["reason"], e["data"]["record"]) for e in told
                if e["subject"] == f"{TOPICS.requests}/0/1"] == [
            (RequestRefused.TYPE, "internal-error: RuntimeError", f"{TOPICS.requests}/0/1")]


@pytest.mark.parametrize(("bad", "rejected_job"), [
    (b"\xff\xfe not json", False),
    (_event(id="bad", data={"recipe": "grid-ticket-routing", "overrides": {"max_steps": 0}}),
     True),
], ids=["unreadable", "refused-request"])
def test_one_batch_keeps_the_good_records_beside_a_bad_one_and_an_in_batch_repeat(
    sessions: sessionmaker[Session], acme_key: SigningKey, caplog: pytest.LogCaptureFixture,
    bad: bytes, rejected_job: bool,
) -> None:
    """Issue 28: one transaction per poll, yet a bad record is refused alone (its dead
    letter, and its tenant told) and a repeat inside the batch is a duplicate, without the
    batch falling back to one savepoint per record."""
    values = [_event(id="a"), bad, _event(id="b"), _event(id="a"), _event(id="c")]
    stored = store_batch(sessions, [record(v, i, headers=_signed(v, acme_key))
                                    for i, v in enumerate(values)], TOPICS, intake.Admission())
    assert [r.outcome for r in stored.results] == [
        Outcome.accepted, Outcome.dead_letter, Outcome.accepted, Outcome.duplicate,
        Outcome.accepted]
    assert stored.results[3].job_id == stored.results[0].job_id
    assert "record by record" not in caplog.text
    with sessions() as s:
        jobs = {j.request_id: j.state for j in s.scalars(select(Job))}
        assert jobs == {"a": JobState.validating, "b": JobState.validating,
                        "c": JobState.validating} | (
            {"bad": JobState.rejected} if rejected_job else {})
        (dead,) = s.scalars(select(DeadLetter)).all()
        assert (dead.source_offset, dead.reason) == (1, stored.results[1].reason)
        assert list(stored.forward) == [dead.id]
        submits = [a.job_id for a in audit.entries(s) if a.action == audit.Action.submit]
        assert sorted(submits) == sorted(job_id_for("acme", "urn:test", i) for i in "abc")
        told = [json.loads(r.payload) for r in s.scalars(select(Outbox).where(
            Outbox.topic == TOPICS.status("acme")))]
        states = sorted((e["data"].get("request_id", ""), e["type"], e["data"].get("state", ""))
                        for e in told)
        refusal = (("bad", JobStatusChanged.TYPE, "rejected") if rejected_job else
                   ("", RequestRefused.TYPE, ""))
        assert states == sorted([*((i, JobStatusChanged.TYPE, "validating") for i in "abc"),
                                 *((("bad", JobStatusChanged.TYPE, "validating"),)
                                   if rejected_job else ()), refusal])


def _statements(sessions: sessionmaker[Session], batch: list[ConsumerRecord],
                admission: intake.Admission) -> int:
    """How many SQL statements storing `batch` costs (an executemany counts once)."""
    count = 0

    def counted(*_: object) -> None:
        nonlocal count
        count += 1

    engine = sessions.kw["bind"]
    sa_event.listen(engine, "before_cursor_execute", counted)
    try:
        stored = store_batch(sessions, batch, TOPICS, admission)
    finally:
        sa_event.remove(engine, "before_cursor_execute", counted)
    assert {r.outcome for r in stored.results} == {Outcome.accepted}
    return count


def test_a_poll_costs_as_many_statements_for_forty_requests_as_for_four(
    sessions: sessionmaker[Session], acme_key: SigningKey,
) -> None:
    """Issue 28: the batch's requests are looked up in one query, the signing key, tenant,
    recipe and quota are read once, and the jobs, transitions, status events and audit rows
    are inserted together: nothing is paid per record (here with the service's admission and
    a site quota default, which once cost a flush and two queries per record). Except on
    SQLite, where the ORM inserts each transition alone to learn its id (SQLite cannot return
    the ids of a multi-row INSERT in order): one statement per request."""
    admission = intake.Admission(quota_defaults=QuotaLimits(concurrent_jobs=1000))
    counts = [_statements(sessions, [
        record(v, i, headers=_signed(v, acme_key))
        for i, v in enumerate(_event(id=f"{n}-{i}") for i in range(n))], admission)
        for n in (4, 40)]
    per_request = 1 if sessions.kw["bind"].dialect.name == "sqlite" else 0
    assert counts[1] - counts[0] == 36 * per_request, counts
    with sessions() as s:
        assert s.scalar(select(func.count()).select_from(Job)) == 44


def test_a_cancel_in_the_batch_frees_its_slot_for_the_requests_after_it(
    sessions: sessionmaker[Session], acme_key: SigningKey,
) -> None:
    """The quota is counted once per batch and tenant, and again after a cancel."""
    held = _accept(sessions, _request(), acme_key).job_id
    with sessions() as s:
        transition(s, s.get_one(Job, held), JobState.queued, TOPICS)
        set_quota(s, "acme", {"concurrent_jobs": 1})
        s.commit()
    values = [_event(id="before"), _cancel(held), _event(id="after")]
    stored = store_batch(sessions, [record(v, i, headers=_signed(v, acme_key))
                                    for i, v in enumerate(values)], TOPICS,
                         intake.Admission(quota_defaults=QuotaLimits()))
    assert [(r.outcome, r.reason.split(":")[0]) for r in stored.results] == [
        (Outcome.dead_letter, "quota.concurrent_jobs"), (Outcome.cancel, "cancelled"),
        (Outcome.accepted, "")]


def test_a_dead_letter_is_forwarded_once_per_record(sessions: sessionmaker[Session]) -> None:
    poison = [record(b"\x00poison", 0)]
    first = store_batch(sessions, poison, TOPICS)
    assert list(first.forward.values()) == [(poison[0], first.results[0].reason)]
    # Re-delivered before the send was marked published: forwarded again.
    assert list(store_batch(sessions, poison, TOPICS).forward) == list(first.forward)
    with sessions() as s:
        s.execute(update(DeadLetter).values(published_at=func.now()))
        s.commit()
    again = store_batch(sessions, poison, TOPICS)
    assert again.results[0].outcome is Outcome.dead_letter and again.forward == {}
    # Another record at the same offset: the broker lost its log; it is a new dead letter.
    other = store_batch(sessions, [record(b"\x00other", 0, timestamp=2)], TOPICS)
    assert list(other.forward) == list(first.forward)
    with sessions() as s:
        (row,) = s.scalars(select(DeadLetter)).all()
        assert (row.value, row.published_at) == (b"\x00other", None)


def test_a_record_too_large_to_forward_goes_as_its_first_bytes(
    sessions: sessionmaker[Session], acme_key: SigningKey,
) -> None:
    value = b"{" + b" " * (2 * 1024 * 1024)
    huge = record(value, 7, headers=_signed(value, acme_key))
    stored = store_batch(sessions, [huge], TOPICS)
    (reason,) = [r.reason for r in stored.results]
    assert reason == f"event is {2 * 1024 * 1024 + 1} bytes, over the 65536 limit"
    key, value, headers = dead_letter_copy(huge, reason)
    assert key == b"k" and value == huge.value[:DLQ_EXCERPT_BYTES]
    assert dict(headers) | {"aif.dlq.at": b""} == {
        "aif.dlq.id": f"{TOPICS.requests}/0/7".encode(), "aif.dlq.reason": reason.encode(),
        "aif.dlq.topic": TOPICS.requests.encode(), "aif.dlq.partition": b"0",
        "aif.dlq.offset": b"7", "aif.dlq.size": str(len(huge.value)).encode(),
        "aif.dlq.truncated": str(DLQ_EXCERPT_BYTES).encode(), "aif.dlq.at": b""}
    small = record(b"x" * (DLQ_MAX_COPY_BYTES - len(b"k")), 8)  # key and value count
    assert dead_letter_copy(small, "r")[1] == small.value
    with sessions() as s:
        (row,) = s.scalars(select(DeadLetter)).all()
        assert (row.size, row.value) == (len(huge.value), huge.value[:DLQ_EXCERPT_BYTES])


MARKER = "S3CR3T-MARKER"


def test_reasons_quote_nothing_the_record_says(
    sessions: sessionmaker[Session], acme_key: SigningKey,
) -> None:
    """Reasons reach logs and headers; a partner's data must not."""
    ok = {"recipe": "grid-ticket-routing"}
    values = [
        _event(type=MARKER), _event(tenant=MARKER), _event(specversion=MARKER),
        _event(source=MARKER * 100), _event(id=MARKER * 100), _event(time=MARKER),
        _event(data={**ok, MARKER: 1}), _event(data={**ok, "labels": {MARKER: 1}}),
        _event(data={**ok, "labels": {"a": MARKER * 10_000}}),
        _event(data={"recipe": MARKER.lower()}), _event(data={"recipe": "no-" + MARKER.lower()}),
        _event(data={**ok, "overrides": {"max_steps": MARKER}}),
        _event(data={**ok, "callback_url": MARKER}),
        _event(data={**ok, "extra_eval_tasks": [MARKER + "/"]}),
        _event(data={"recipe_inline": {"name": MARKER, "data": {"columns": {MARKER: 1}}}}),
        _event(type=CancelRequested.TYPE, data={"job_id": MARKER}),
        _event(type=CancelRequested.TYPE, data={"job_id": 1, MARKER: 1}),
        _event(data=MARKER), f'{{"{MARKER}": \\{MARKER}}}'.encode(),
        f'{{"id": "{MARKER}\\udcff", {MARKER}}}'.encode(), MARKER.encode() + b"\xff",
    ]
    _accept(sessions, _request(), acme_key)  # so that a conflicting payload for it is refused
    values.append(_request(labels={"x": MARKER}))
    stored = store_batch(sessions, [record(v, i, headers=_signed(v, acme_key))
                                    for i, v in enumerate(values)], TOPICS, intake.Admission())
    assert all(r.outcome is Outcome.dead_letter for r in stored.results)
    for (rec, reason) in stored.forward.values():
        _, _, headers = dead_letter_copy(rec, reason)
        for name, value in headers:
            assert MARKER.lower().encode() not in value.lower(), (name, value)
