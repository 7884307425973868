"""The HTTP API with the real embedded broker: a submission arrives on the requests topic as
a signed request event, the same Idempotency-Key gives the same job, the app is ready, and
a schemathesis run with a valid key finds no server error."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from schemathesis.checks import not_a_server_error
from sqlalchemy.orm import Session, sessionmaker

from aif.db.session import session_factory
from aif.orchestrator.intake import accept
from aif.settings import Settings
from aif.tenants import signing_secret
from events.bus import KafkaConfig, ensure_topics, make_consumer
from events.envelope import CloudEvent
from events.signing import signing_headers, verify
from tests.aif.web.test_api_jobs import Api, make_api


@pytest.fixture
def api(sessions: sessionmaker[Session], tmp_path: Path, broker: str,
        topics_prefix: str) -> Iterator[Api]:
    settings = Settings(home=tmp_path, topic_prefix=topics_prefix,
                        kafka=KafkaConfig(bootstrap_servers=broker))
    ensure_topics(settings.kafka, settings.topics.shared())
    yield from make_api(sessions, settings)


@pytest.fixture
def topics_prefix(topics: object) -> str:
    return topics.prefix  # type: ignore[attr-defined]


def _records(api: Api) -> list:
    consumer = make_consumer(api.settings.kafka, api.settings.topics.requests, group_id=None,
                             consumer_timeout_ms=3000)
    try:
        return list(consumer)
    finally:
        consumer.close()


def test_a_submission_is_a_signed_request_event_and_its_key_gives_one_job(api: Api) -> None:
    body = {"recipe": "grid-ticket-routing", "labels": {"team": "grid"}}
    first = api.post(api.acme, "/v1/jobs", json=body, headers={"Idempotency-Key": "k-1"})
    assert first.status_code == 202, first.text
    job = first.json()
    assert first.headers["location"] == job["url"] and job["url"].endswith(f"/v1/jobs/{job['id']}")
    assert job["request_id"] == "k-1"

    (record,) = _records(api)
    event = CloudEvent.from_bytes(record.value)
    assert event.tenant == "acme" and event.id == "k-1" and event.source == "urn:aif-tuning:api"
    assert event.data == body | {"overrides": {}, "extra_eval_tasks": []}
    assert record.key == job["id"].encode()
    key_id, signature = signing_headers(record.headers)
    with api.sessions() as s:
        tenant, secret = signing_secret(s, key_id)
    assert tenant == "acme" and verify(record.value, signature, secret)

    # The same key again, before intake stored the job: published again, same job id ...
    again = api.post(api.acme, "/v1/jobs", json=body, headers={"Idempotency-Key": "k-1"})
    assert again.status_code == 202 and again.json()["id"] == job["id"]
    # ... and once intake stored it (verifying the signature), nothing is sent again.
    with api.sessions() as s:
        stored = accept(s, record.value, api.settings.topics, headers=record.headers)
        s.commit()
    assert stored.job_id == job["id"], stored.reason
    assert api.post(api.acme, "/v1/jobs", json=body,
                    headers={"Idempotency-Key": "k-1"}).json()["id"] == job["id"]
    assert len(_records(api)) == 2
    assert api.get(api.acme, job["url"]).json()["labels"] == {"team": "grid"}

    reused = api.post(api.acme, "/v1/jobs", json={"recipe": "other-recipe"},
                      headers={"Idempotency-Key": "k-1"})
    assert reused.status_code == 409 and reused.json()["field"] == "Idempotency-Key"
    # Another tenant's same key is its own request, not acme's job.
    theirs = api.post(api.globex, "/v1/jobs", json=body, headers={"Idempotency-Key": "k-1"})
    assert theirs.status_code == 202 and theirs.json()["id"] != job["id"]
    fresh = [api.post(api.acme, "/v1/jobs", json=body).json()["id"] for _ in range(2)]
    assert len({*fresh, job["id"]}) == 3  # without a key, every submission is new


def test_ready_with_database_and_broker(api: Api) -> None:
    assert api.client.get("/readyz").json() == {"status": "ready"}


@pytest.fixture
def fuzzed(tmp_path: Path, broker: str, topics_prefix: str) -> Iterator[Api]:
    """SQLite only: the fuzzer exercises the routes, the database tests are above."""
    settings = Settings(home=tmp_path, topic_prefix=topics_prefix,
                        kafka=KafkaConfig(bootstrap_servers=broker))
    ensure_topics(settings.kafka, settings.topics.shared())
    yield from make_api(session_factory(f"sqlite:///{tmp_path / 'aif.db'}"), settings)


def test_no_input_makes_the_api_fail(fuzzed: Api) -> None:
    """Every operation of the document, with a valid key: whatever schemathesis sends, the
    answer is never a 5xx. (Its pytest plugin does not run on pytest 9: one loop here.)"""
    headers = fuzzed.auth(fuzzed.acme)
    for result in schemathesis.openapi.from_asgi("/openapi.json",
                                                 fuzzed.client.app).get_all_operations():

        @given(case=result.ok().as_strategy())
        @hypothesis_settings(max_examples=15, deadline=None, database=None,
                             suppress_health_check=list(HealthCheck))
        def no_server_error(case: schemathesis.Case) -> None:
            case.call_and_validate(headers=headers, checks=[not_a_server_error])

        no_server_error()
