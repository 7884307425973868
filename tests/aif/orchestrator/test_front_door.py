"""Issue #24 point 1: a request the service will refuse is refused where the tenant sees it.

Over HTTP, `POST /v1/jobs` runs intake's own checks (`aif.orchestrator.admission.read_event`
and `screen`) before it publishes anything, and answers a problem document naming the field
and rule: 413 for the size, 429 for a quota with nothing left, 422 for the rest. Over Kafka,
a request whose tenant the signature proved and whose body is refused becomes a job in state
`rejected` with the reason (its status events on the tenant's status topic, in the batch's
transaction with the dead letter), so `GET /v1/jobs/{id}` and the status topic say why; any
other signed record it refuses (unreadable, unnamed, a cancel, another type, a reused id) is
told to its tenant by a `request.refused` event on that status topic.
No test here trains: each is a check of the request alone.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import uvicorn
from kafka.consumer.fetcher import ConsumerRecord
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker
from typer.testing import CliRunner

from aif.cli import app as cli
from aif.db.models import DeadLetter, Job, Outbox
from aif.orchestrator.admission import Admission
from aif.orchestrator.intake import Outcome, accept
from aif.orchestrator.kafka_intake import store_batch
from aif.orchestrator.references import References
from aif.quotas import set_quota
from aif.settings import Settings
from aif.web.app import create_app
from events.bus import KafkaConfig
from events.envelope import MAX_EVENT_BYTES, job_id_for
from events.messages import (
    CancelRequested,
    FineTuneRequested,
    JobStatusChanged,
    RequestRefused,
)
from events.signing import sign
from events.states import JobState
from events.topics import Topics
from tests.aif.conftest import local_worker
from tests.aif.web.test_api_jobs import Api, make_api
from tests.conftest import free_port

S = JobState
GOOD = {"recipe": "grid-ticket-routing"}
BIG = {"recipe": "grid-ticket-routing", "labels": {"note": "x" * 70_000}}  # 70 KB


class RecordingBus:
    """The web app's way onto Kafka, recording what it would publish: no broker needed."""

    def __init__(self) -> None:
        self.sent: list[tuple[bytes, str, list[tuple[str, bytes]]]] = []

    def ready(self) -> None:
        pass

    def publish(self, value: bytes, key: str, headers: list[tuple[str, bytes]]) -> None:
        self.sent.append((value, key, headers))

    def close(self) -> None:
        pass


@pytest.fixture
def api(sessions: sessionmaker[Session], tmp_path: Path) -> Iterator[Api]:
    settings = Settings(home=tmp_path, topic_prefix="fd",
                        kafka=KafkaConfig(bootstrap_servers=f"127.0.0.1:{free_port()}"))
    for made in make_api(sessions, settings):
        made.client.app.state.bus = RecordingBus()  # type: ignore[attr-defined]
        yield made


def _sent(api: Api) -> list[tuple[bytes, str, list[tuple[str, bytes]]]]:
    return api.client.app.state.bus.sent  # type: ignore[attr-defined]


def _refused(api: Api, body: dict, status: int, field: str | None, *fragments: str) -> dict:
    published = len(_sent(api))
    answer = api.post(api.acme, "/v1/jobs", json=body)
    assert answer.status_code == status, answer.text
    assert answer.headers["content-type"] == "application/problem+json"
    problem = answer.json()
    assert problem["status"] == status and problem.get("field") == field, problem
    for fragment in fragments:
        assert fragment in problem["detail"], problem
    assert len(_sent(api)) == published, "a refused request was published"
    return problem


# -- HTTP: refused before anything is published -------------------------------------------

def test_an_unknown_recipe_is_a_422_with_a_suggestion(api: Api) -> None:
    problem = _refused(api, {"recipe": "grid-ticket-routin"}, 422, "recipe",
                       "recipe: no such recipe. Did you mean 'grid-ticket-routing'?")
    assert problem["title"] == "Invalid request"


def test_a_request_over_the_event_size_limit_is_a_413(api: Api) -> None:
    problem = _refused(api, BIG, 413, "body", f"over the {MAX_EVENT_BYTES} limit")
    assert "xxxx" not in json.dumps(problem)


def test_a_path_outside_the_tenants_data_root_is_a_422_naming_no_path(api: Api) -> None:
    problem = _refused(api, GOOD | {"train_file": "/etc/passwd"}, 422, "data.train_file",
                       "data.train_file: outside the tenant's data root")
    assert "/etc" not in json.dumps(problem) and str(api.settings.home) not in json.dumps(problem)


def _nested(levels: int) -> object:
    value: object = "x"
    for _ in range(levels):
        value = {"a": value}
    return value


@pytest.mark.parametrize(("raw", "status", "field", "rule"), [
    (b"[" * 100_000, 400, "body", "body: cannot be read as JSON"),  # past the parser's depth
    (b'{"recipe": "\xff"}', 400, "body", "body: cannot be read as JSON"),  # not UTF-8
    (json.dumps(GOOD | {"labels": _nested(40)}).encode(), 422, "body.labels.a",
     "body.labels.a: Input should be a valid string"),
], ids=["too-deep-to-parse", "not-utf-8", "deeper-than-the-schema"])
def test_a_body_too_deep_or_unreadable_is_a_problem_naming_the_rule(
    api: Api, raw: bytes, status: int, field: str, rule: str,
) -> None:
    answer = api.post(api.acme, "/v1/jobs", content=raw,
                      headers={"content-type": "application/json"})
    assert answer.status_code == status, answer.text
    assert answer.headers["content-type"] == "application/problem+json"
    problem = answer.json()
    assert problem["field"] == field and problem["detail"].startswith(rule), problem
    assert "[[" not in answer.text and '"x"' not in answer.text
    assert _sent(api) == []


@pytest.mark.parametrize(("body", "field", "rule"), [
    (GOOD | {"overrides": {"max_steps": 1}}, "train.max_steps",
     "must be above the warmup steps"),
    (GOOD | {"dataset": "owner/name"}, "data.dataset", "hub datasets are not enabled"),
    (GOOD | {"train_file": "https://example.org/t.jsonl"}, "data.train_file",
     "remote data (http/https URLs) is not enabled"),
    (GOOD | {"eval_file": "../globex/rows.jsonl"}, "data.eval_file",
     "outside the tenant's data root"),
], ids=["warmup", "hub-dataset", "remote-url", "dot-dot"])
def test_admission_and_reference_rules_are_422s(api: Api, body: dict, field: str,
                                               rule: str) -> None:
    problem = _refused(api, body, 422, field, f"{field}: {rule}")
    assert "globex" not in problem["detail"] and "example.org" not in problem["detail"]


def test_the_services_own_admission_is_used_where_the_app_has_it(api: Api) -> None:
    """`app.state.admission`: the orchestrator's rules (its launcher's processes)."""
    api.client.app.state.admission = Admission(max_processes=1)  # type: ignore[attr-defined]
    _refused(api, GOOD | {"overrides": {"num_processes": 2}}, 422, "train.num_processes",
             "train.num_processes: at most 1 on this service")


def test_a_quota_with_nothing_left_is_a_429(api: Api) -> None:
    with api.sessions() as s:
        set_quota(s, "acme", {"concurrent_jobs": 1})
        s.commit()
    api.store_job("acme", [S.validating, S.queued], "running")
    problem = _refused(api, GOOD, 429, "quota.concurrent_jobs",
                       "this tenant's queued or running jobs: 1 (tenant limit 1 "
                       "concurrent jobs)")
    assert problem["title"] == "Too many requests"
    # Another tenant is not held to acme's limit.
    assert api.post(api.globex, "/v1/jobs", json=GOOD).status_code == 202


def test_a_month_without_tokens_left_is_a_429(api: Api) -> None:
    with api.sessions() as s:
        set_quota(s, "acme", {"monthly_tokens": 1000})
        s.commit()
    done = api.store_job("acme", [S.validating, S.queued, S.training, S.failed], "used")
    with api.sessions() as s:
        s.execute(update(Job).where(Job.id == done).values(
            measured={"tokens": 1000, "device_hours": 0.1}))
        s.commit()
    _refused(api, GOOD, 429, "quota.monthly_tokens", "no tokens left this month")


def test_a_good_request_is_published_once_and_a_stored_one_not_again(api: Api) -> None:
    first = api.post(api.acme, "/v1/jobs", json=GOOD, headers={"Idempotency-Key": "k-1"})
    assert first.status_code == 202, first.text
    ((value, key, headers),) = _sent(api)
    assert key == first.json()["id"]
    with api.sessions() as s:  # intake stores it; then the tenant's quota fills up
        assert accept(s, value, api.settings.topics, headers=headers).job_id == key
        set_quota(s, "acme", {"concurrent_jobs": 0})
        s.commit()
    # A retry of the stored request is the same job, whatever the rules say now.
    again = api.post(api.acme, "/v1/jobs", json=GOOD, headers={"Idempotency-Key": "k-1"})
    assert again.status_code == 202 and again.json()["id"] == key
    assert len(_sent(api)) == 1
    _refused(api, GOOD, 429, "quota.concurrent_jobs")  # while a new one is refused


def test_what_only_the_worker_can_refuse_leaves_a_rejected_job_at_its_url(
    api: Api, tmp_path: Path,
) -> None:
    """A file that does not exist is known only where the files are: accepted at the door,
    the job ends `rejected` with the reason, readable where the 202 pointed."""
    answer = api.post(api.acme, "/v1/jobs", json=GOOD | {"train_file": "not-there.jsonl"})
    assert answer.status_code == 202, answer.text
    ((value, key, headers),) = _sent(api)
    with api.sessions() as s:  # intake stores it, the worker validates it
        assert accept(s, value, api.settings.topics, _admission(api),
                      headers=headers).outcome is Outcome.accepted
        s.commit()
    worker = local_worker(api.sessions, tmp_path)
    assert worker.leases.claim() == key
    worker.run_job(key)
    shown = api.get(api.acme, answer.json()["url"])
    assert (shown.json()["state"], shown.json()["reason"]) == (
        "rejected", "data.train_file: no such file in the tenant's data root")


def test_aif_submit_over_http_prints_the_problem_and_fails(api: Api, tmp_path: Path) -> None:
    app = create_app(api.sessions, api.settings)
    bus = app.state.bus = RecordingBus()
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, port=port, log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    try:
        while not server.started:
            time.sleep(0.05)
        done = CliRunner().invoke(cli, ["submit", "grid-ticket-routin", "--api",
                                        f"http://127.0.0.1:{port}", "--wait"],
                                  env={"AIF_API_KEY": api.acme.api_key,
                                       "AIF_HOME": str(tmp_path)})
    finally:
        server.should_exit = True
    assert done.exit_code != 0, done.output
    said = " ".join(done.output.split())  # rich wraps long lines
    assert "422" in said and "Did you mean 'grid-ticket-routing'?" in said, said
    assert "submitted job" not in said and bus.sent == []


# -- Kafka: a refused request of a known tenant is a rejected job it can read ---------------

TOPICS = Topics("fd")


def _record(api: Api, raw: bytes, offset: int, signed: bool = True) -> ConsumerRecord:
    headers = sign(raw, api.acme.signing_key_id, api.acme.signing_secret) if signed else []
    return ConsumerRecord(TOPICS.requests, 0, -1, offset, 1, 0, b"k", raw, headers, None, 1,
                          len(raw), 0)


def _event(data: dict, event_id: str = "e-1", tenant: str | None = "acme",
           type_: str = FineTuneRequested.TYPE) -> bytes:
    return json.dumps({"specversion": "1.0", "id": event_id, "source": "urn:partner",
                       "type": type_, "data": data}
                      | ({"tenant": tenant} if tenant else {})).encode()


def _statuses(sessions: sessionmaker[Session], job_id: str) -> list[JobStatusChanged]:
    with sessions() as s:
        rows = s.scalars(select(Outbox).where(Outbox.key == job_id).order_by(Outbox.id)).all()
        assert {r.topic for r in rows} <= {TOPICS.status("acme")}
        return [JobStatusChanged.model_validate(json.loads(r.payload)["data"]) for r in rows]


def _admission(api: Api) -> Admission:
    """Intake's admission with the site's reference rules and quota defaults."""
    admission = Admission(None, References.of(api.settings))
    admission.quota_defaults = api.settings.quota_defaults
    return admission


@pytest.mark.parametrize(("data", "reason"), [
    ({"recipe": "grid-ticket-routin"},
     "recipe: no such recipe. Did you mean 'grid-ticket-routing'?"),
    (GOOD | {"train_file": "/etc/passwd"}, "data.train_file: outside the tenant's data root"),
    (GOOD | {"overrides": {"max_step": 5}}, "data.overrides.<key> (did you mean 'max_steps'?)"),
    (BIG, f"over the {MAX_EVENT_BYTES} limit"),
], ids=["unknown-recipe", "etc-passwd", "schema", "70-kb"])
def test_a_signed_request_refused_at_intake_is_a_rejected_job_its_tenant_reads(
    api: Api, data: dict, reason: str,
) -> None:
    raw = _event(data)
    stored = store_batch(api.sessions, [_record(api, raw, 7)], TOPICS, _admission(api))
    (result,) = stored.results
    job_id = job_id_for("acme", "urn:partner", "e-1")
    assert (result.outcome, result.job_id, result.tenant) == (Outcome.dead_letter, job_id, "acme")
    assert reason in result.reason
    with api.sessions() as s:  # the dead letter, in the same transaction, is still there
        (letter,) = s.scalars(select(DeadLetter)).all()
        assert (letter.reason, letter.tenant) == (result.reason, "acme")
    assert [reason for _, reason in stored.forward.values()] == [result.reason]
    statuses = _statuses(api.sessions, job_id)
    assert [(e.previous_state, e.state) for e in statuses] == [
        (None, S.validating), (S.validating, S.rejected)]
    assert statuses[-1].reason == result.reason and statuses[-1].request_id == "e-1"
    shown = api.get(api.acme, f"/v1/jobs/{job_id}")
    assert shown.status_code == 200, shown.text
    assert (shown.json()["state"], shown.json()["reason"]) == ("rejected", result.reason)
    assert "/etc" not in shown.text and "xxxx" not in shown.text
    assert api.get(api.globex, f"/v1/jobs/{job_id}").status_code == 404
    assert [j["id"] for j in api.get(api.acme, "/v1/jobs").json()["data"]] == [job_id]


@pytest.mark.store
def test_a_refused_record_delivered_again_is_forwarded_once_and_stays_one_job(api: Api) -> None:
    raw = _event({"recipe": "grid-ticket-routin"})
    record = _record(api, raw, 3)
    first = store_batch(api.sessions, [record], TOPICS, _admission(api))
    assert list(first.forward.values()) == [(record, first.results[0].reason)]
    # A crash before the dead letter was forwarded: the batch comes again.
    again = store_batch(api.sessions, [record], TOPICS, _admission(api))
    assert again.results == first.results and len(again.forward) == 1
    with api.sessions() as s:
        s.execute(update(DeadLetter).values(published_at=DeadLetter.created_at))
        s.commit()
    assert store_batch(api.sessions, [record], TOPICS, _admission(api)).forward == {}
    # Sent again by the partner (a new offset): one more dead letter, the same job.
    resent = store_batch(api.sessions, [_record(api, raw, 4)], TOPICS, _admission(api))
    assert resent.results[0].outcome is Outcome.dead_letter and len(resent.forward) == 1
    job_id = job_id_for("acme", "urn:partner", "e-1")
    assert len(_statuses(api.sessions, job_id)) == 2
    with api.sessions() as s:
        assert s.scalars(select(Job.id)).all() == [job_id]
        assert len(s.scalars(select(DeadLetter)).all()) == 2
    # The same id with another payload is a conflict, as for any stored request.
    other = store_batch(api.sessions, [_record(api, _event(GOOD), 5)], TOPICS, _admission(api))
    assert "different payload" in other.results[0].reason


@pytest.mark.store
def test_within_one_batch_a_refused_request_and_its_copy_are_one_job(api: Api) -> None:
    raw = _event({"recipe": "grid-ticket-routin"})
    stored = store_batch(api.sessions, [_record(api, raw, 1), _record(api, raw, 2),
                                        _record(api, _event(GOOD, "e-2"), 3)],
                         TOPICS, _admission(api))
    assert [r.outcome for r in stored.results] == [
        Outcome.dead_letter, Outcome.dead_letter, Outcome.accepted]
    with api.sessions() as s:
        assert sorted(s.scalars(select(Job.state)).all()) == ["rejected", "validating"]


HUGE = _event({"recipe": "grid-ticket-routing", "labels": {"a": "x" * (2 * 2**20)}})
"""Over Kafka's default largest record: not even its attributes are read."""
UNNAMED = {  # signed records whose tenant hears of their refusal without a job: raw, named
    "tenant-mismatch": (_event(GOOD, tenant="globex"), True),  # acme signed it, not globex
    "cancel-unknown-job": (_event({"job_id": "nope"}, type_=CancelRequested.TYPE), True),
    "cancel-schema": (_event({"reason": 5}, type_=CancelRequested.TYPE), True),
    "other-type": (_event(GOOD, type_="com.example.other"), True),
    "no-id": (b'{"specversion": "1.0", "source": "urn:partner", "type": "x"}', False),
    "not-json": (b"IBAN DE89370400440532013000 \xff", False),
    "deep": (b"[" * 100, False),
    "too-large-to-read": (HUGE, False),
}


def _refusal_events(sessions: sessionmaker[Session]) -> list[tuple[str, str, dict]]:
    """(topic, key, envelope) of every event queued so far."""
    with sessions() as s:
        return [(r.topic, r.key or "", json.loads(r.payload))
                for r in s.scalars(select(Outbox).order_by(Outbox.id))]


@pytest.mark.parametrize("kind", UNNAMED)
def test_a_signed_record_refused_without_a_job_is_told_to_its_tenant(api: Api, kind: str
                                                                     ) -> None:
    """Issue #24.1: no request a tenant made ends where only operators see it, named or not:
    a `request.refused` on the signer's status topic, beside the dead letter, once."""
    raw, named = UNNAMED[kind]
    record = _record(api, raw, 9)
    stored = store_batch(api.sessions, [record], TOPICS, _admission(api))
    (result,) = stored.results
    assert result.outcome is Outcome.dead_letter and len(stored.forward) == 1
    ((topic, key, event),) = _refusal_events(api.sessions)
    assert (topic, key) == (TOPICS.status("acme"), "fd.requests/0/9")
    assert (event["type"], event["tenant"], event["subject"]) == (
        RequestRefused.TYPE, "acme", "fd.requests/0/9")
    told = RequestRefused.model_validate(event["data"])
    assert (told.tenant, told.reason, told.record) == ("acme", result.reason, "fd.requests/0/9")
    assert told.record_sha256 == hashlib.sha256(raw).hexdigest()
    with api.sessions() as s:
        # The dead letter is the tenant's too: erased with it.
        assert s.execute(select(DeadLetter.reason, DeadLetter.tenant)).all() == [
            (told.reason, "acme")]
        assert s.scalars(select(Job)).all() == []
    naming = ("urn:partner", "e-1") if named else (None, None)
    assert (told.request_source, told.request_id) == naming
    assert (event.get("requestsource"), event.get("requestid")) == naming
    assert "DE8937" not in json.dumps(event) and "xxxx" not in json.dumps(event)
    # Delivered again after a crash: the dead letter is found, nothing is told twice.
    store_batch(api.sessions, [record], TOPICS, _admission(api))
    assert len(_refusal_events(api.sessions)) == 1


def test_an_earlier_requests_id_with_another_payload_is_told_to_its_tenant(api: Api) -> None:
    first = store_batch(api.sessions, [_record(api, _event(GOOD), 1)], TOPICS, _admission(api))
    assert first.results[0].outcome is Outcome.accepted
    again = store_batch(api.sessions, [_record(api, _event(GOOD | {"labels": {"a": "b"}}), 2)],
                        TOPICS, _admission(api))
    assert "different payload" in again.results[0].reason
    told = [e for _, _, e in _refusal_events(api.sessions) if e["type"] == RequestRefused.TYPE]
    assert [(e["data"]["request_id"], e["data"]["record"]) for e in told] == [
        ("e-1", "fd.requests/0/2")]
    # The job the first request made is untouched: only `validating`.
    assert [e.state for e in _statuses(api.sessions, first.results[0].job_id or "")] == [
        S.validating]


@pytest.mark.parametrize(("raw", "signed"), [
    (_event({"recipe": "grid-ticket-routin"}), False),  # trusted network: tenant not proven
    (_event({"job_id": "nope"}, type_=CancelRequested.TYPE), False),
    (b"[" * 100, False),
    (_event(GOOD, tenant="globex"), True),  # a signature of no key: anybody's forgery
], ids=["unsigned", "unsigned-cancel", "unsigned-deep", "bad-signature"])
def test_a_refused_record_no_signature_proves_is_told_to_the_operators_only(
    api: Api, raw: bytes, signed: bool,
) -> None:
    record = _record(api, raw, 0, signed)
    if signed:  # signed, but not by this value: the HMAC does not match
        record = record._replace(value=raw + b" ")
    stored = store_batch(api.sessions, [record], TOPICS, _admission(api),
                         require_signed=signed)
    assert stored.results[0].outcome is Outcome.dead_letter and len(stored.forward) == 1
    assert _refusal_events(api.sessions) == []
    with api.sessions() as s:
        assert s.scalars(select(Job)).all() == []


def test_without_admission_intake_still_refuses_only_the_schema(api: Api) -> None:
    """Callers that store requests directly leave the rules to the worker."""
    with api.sessions() as s:
        raw = _event({"recipe": "grid-ticket-routin"})
        ok = accept(s, raw, TOPICS, headers=_record(api, raw, 0).headers)
        raw = _event({"recipe": "Bad Name"}, "e-2")
        bad = accept(s, raw, TOPICS, headers=_record(api, raw, 0).headers)
        s.commit()
    assert ok.outcome is Outcome.accepted
    assert bad.outcome is Outcome.dead_letter and bad.reason.startswith("data.recipe: ")


def test_a_signed_request_over_quota_is_rejected_at_intake(api: Api) -> None:
    with api.sessions() as s:
        set_quota(s, "acme", {"concurrent_jobs": 0})
        s.commit()
    raw = _event(GOOD)
    (result,) = store_batch(api.sessions, [_record(api, raw, 0)], TOPICS,
                            _admission(api)).results
    assert result.reason.startswith("quota.concurrent_jobs: this tenant's queued or running "
                                    "jobs: 0 (tenant limit 0 concurrent jobs)")
    assert api.get(api.acme, f"/v1/jobs/{result.job_id}").json()["state"] == "rejected"
    # Envelope and request stored as sent, as for an accepted job.
    with api.sessions() as s:
        job = s.get_one(Job, result.job_id)
        assert job.request["data"] == GOOD and job.recipe_name == "grid-ticket-routing"
        assert job.public is False
