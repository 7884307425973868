"""Intake decisions against a real database (SQLite and PostgreSQL)."""

import json

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from aif.db.models import Job, Outbox
from aif.orchestrator.intake import Outcome, accept
from events.bus import envelope
from events.envelope import job_id_for
from events.messages import CancelRequested, FineTuneRequested
from events.states import JobState
from events.topics import Topics

TOPICS = Topics("t")


def _request(**data: object) -> bytes:
    payload = {"recipe": "grid-ticket-routing", **data}
    ev = envelope(FineTuneRequested.model_validate(payload), source="urn:test", tenant="acme",
                  event_id="req-1")
    return ev.to_bytes()


def _accept(sessions: sessionmaker[Session], raw: bytes | None):
    with sessions() as s:
        result = accept(s, raw, TOPICS)
        s.commit()
    return result


def _jobs(sessions: sessionmaker[Session]) -> int:
    with sessions() as s:
        return s.scalar(select(func.count()).select_from(Job))


def test_valid_request_becomes_a_validating_job_with_a_status_event(
    sessions: sessionmaker[Session],
) -> None:
    result = _accept(sessions, _request())
    assert result.outcome is Outcome.accepted
    assert result.job_id == job_id_for("urn:test", "req-1")
    with sessions() as s:
        job = s.get_one(Job, result.job_id)
        assert (job.state, job.tenant, job.recipe_name) == (
            JobState.validating, "acme", "grid-ticket-routing")
        (row,) = s.scalars(select(Outbox)).all()
        assert row.topic == TOPICS.status and row.key == job.id


def test_same_event_a_hundred_times_is_one_job(sessions: sessionmaker[Session]) -> None:
    raw = _request()
    outcomes = [_accept(sessions, raw).outcome for _ in range(100)]
    assert outcomes[0] is Outcome.accepted
    assert set(outcomes[1:]) == {Outcome.duplicate}
    assert _jobs(sessions) == 1


def test_same_id_with_other_payload_is_a_conflict(sessions: sessionmaker[Session]) -> None:
    _accept(sessions, _request())
    result = _accept(sessions, _request(labels={"team": "b"}))
    assert result.outcome is Outcome.dead_letter
    assert "different payload" in result.reason
    assert _jobs(sessions) == 1


def test_repeats_within_one_batch_transaction_are_recognised(
    sessions: sessionmaker[Session],
) -> None:
    """A poll's records share one transaction: the second copy must see the first, unflushed."""
    with sessions() as s:
        outcomes = [accept(s, raw, TOPICS).outcome
                    for raw in (_request(), _request(), _request(labels={"team": "b"}))]
        s.commit()
    assert outcomes == [Outcome.accepted, Outcome.duplicate, Outcome.dead_letter]
    assert _jobs(sessions) == 1


def test_a_rolled_back_request_is_accepted_again(sessions: sessionmaker[Session]) -> None:
    with sessions() as s:
        assert accept(s, _request(), TOPICS).outcome is Outcome.accepted
        s.rollback()
        assert accept(s, _request(), TOPICS).outcome is Outcome.accepted
        s.commit()
    assert _jobs(sessions) == 1


def _event(**fields: object) -> bytes:
    base = {"specversion": "1.0", "id": "e1", "source": "urn:test", "tenant": "acme",
            "type": FineTuneRequested.TYPE, "data": {"recipe": "grid-ticket-routing"}}
    base.update(fields)
    return json.dumps(base).encode()


def test_bad_requests_are_dead_lettered_with_the_field(sessions: sessionmaker[Session]) -> None:
    cases = {
        b"\xff\xfe": "not JSON",
        _event(type="com.example.other"): "unknown event type",
        _event(tenant=None): "tenant",
        _event(data={"recipe": "grid-ticket-routing", "overrides": {"max_steps": 0}}):
            "data.overrides.max_steps",
        _event(data={"recipe": "grid-ticket-routing", "surprise": 1}): "data.surprise",
    }
    for raw, fragment in cases.items():
        result = _accept(sessions, raw)
        assert result.outcome is Outcome.dead_letter
        assert fragment in result.reason
    assert _jobs(sessions) == 0


def _cancel(job_id: str, tenant: str = "acme") -> bytes:
    return envelope(CancelRequested(job_id=job_id, reason="changed my mind"),
                    source="urn:test", tenant=tenant).to_bytes()


def test_cancel_moves_a_waiting_job_to_cancelled(sessions: sessionmaker[Session]) -> None:
    job_id = _accept(sessions, _request()).job_id
    result = _accept(sessions, _cancel(job_id))
    assert (result.outcome, result.reason) == (Outcome.cancel, "cancelled")
    with sessions() as s:
        job = s.get_one(Job, job_id)
        assert (job.state, job.reason) == (JobState.cancelled, "changed my mind")
    again = _accept(sessions, _cancel(job_id))
    assert again.reason == "not cancelled: job is cancelled"


def test_cancel_of_another_tenants_or_unknown_job_is_dead_lettered(
    sessions: sessionmaker[Session],
) -> None:
    job_id = _accept(sessions, _request()).job_id
    for raw in (_cancel(job_id, tenant="intruder"), _cancel("no-such-job")):
        result = _accept(sessions, raw)
        assert result.outcome is Outcome.dead_letter and "data.job_id" in result.reason
    with sessions() as s:
        assert s.get_one(Job, job_id).state == JobState.validating
