"""`aif submit --wait` against a scripted orchestrator on the real embedded broker: the exit
code follows the final state, and the command returns as soon as the job is over."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from typer.testing import CliRunner

from aif.cli import _demo_signing_key, app
from aif.db.models import Job
from aif.db.session import session_factory
from aif.jobstore.outbox import job_envelope
from aif.settings import Settings
from aif.tenants import signing_secret
from events.bus import KafkaConfig, ensure_topics, make_consumer, make_producer, publish
from events.envelope import CloudEvent, job_id_for
from events.messages import (
    EvaluationCompleted,
    GateDecision,
    JobEvent,
    JobStatusChanged,
    MetricScore,
    ModelReady,
)
from events.signing import SIGNATURE_HEADER, signing_headers, verify
from events.states import JobState
from events.topics import Topics

S = JobState


def _script(job: Job, states: list[JobState], *, evaluated: bool) -> list[tuple[str, JobEvent]]:
    """(topic name, event) in the order the outbox publishes them."""
    out: list[tuple[str, JobEvent]] = []
    for prev, to in zip([None, *states], states, strict=False):
        if prev is S.evaluating and evaluated:
            out.append(("models", EvaluationCompleted(
                job_id=job.id, tenant=job.tenant,
                scores=[MetricScore(task="t", metric="acc", base=0.5, tuned=0.7)],
                gate=GateDecision(passed=to is S.handing_off, reason="gain 0.2"))))
        if to is S.succeeded:
            out.append(("models", ModelReady(
                job_id=job.id, tenant=job.tenant, base_model="m", adapter_uri="file:///a",
                files_sha256={}, scores=[])))
        out.append(("status", JobStatusChanged(job_id=job.id, tenant=job.tenant, state=to,
                                               previous_state=prev, at=datetime.now(UTC))))
    return out


def _fake_orchestrator(cfg: KafkaConfig, topics: Topics, states: list[JobState],
                       evaluated: bool, done: list[float]) -> threading.Thread:
    """Answer the first request on the requests topic with the scripted events."""

    def run() -> None:
        consumer = make_consumer(cfg, topics.requests, group_id=None, consumer_timeout_ms=30_000)
        record = next(iter(consumer))
        consumer.close()
        request = CloudEvent.from_bytes(record.value)
        job = Job(id=job_id_for(request.tenant, request.source, request.id), tenant=request.tenant,
                  request_source=request.source, request_id=request.id)
        producer = make_producer(cfg)
        for topic, data in _script(job, states, evaluated=evaluated):
            time.sleep(0.2)
            publish(producer, getattr(topics, topic)(job.tenant), job_envelope(data, job),
                    key=job.id)
        producer.close()
        done.append(time.monotonic())

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


@pytest.mark.parametrize(("states", "evaluated", "exit_code", "says"), [
    ([S.validating, S.rejected], False, 1, "job finished: rejected"),
    ([S.validating, S.queued, S.training, S.failed], False, 1, "job finished: failed"),
    ([S.validating, S.queued, S.training, S.evaluating, S.handing_off, S.succeeded], True, 0,
     "model ready: file:///a"),
], ids=["validating-rejected", "training-failed", "succeeded"])
def test_submit_wait_exits_with_the_outcome_as_soon_as_the_job_is_over(
    broker: str, topics: Topics, tmp_path: Path, states: list[JobState], evaluated: bool,
    exit_code: int, says: str,
) -> None:
    cfg = KafkaConfig(bootstrap_servers=broker)
    ensure_topics(cfg, [*topics.shared(), *topics.of_tenant("demo")])  # the CLI's default tenant
    done: list[float] = []
    thread = _fake_orchestrator(cfg, topics, states, evaluated, done)
    result = CliRunner().invoke(app, ["submit", "grid-ticket-routing", "--wait"], env={
        "AIF_KAFKA__BOOTSTRAP_SERVERS": broker, "AIF_TOPIC_PREFIX": topics.prefix,
        "AIF_HOME": str(tmp_path),
    })
    returned = time.monotonic()
    thread.join(10)
    assert result.exit_code == exit_code, result.output
    assert says in result.output
    assert ("base vs tuned" in result.output) == evaluated
    assert done and returned - done[0] < 5.0, "the command lingered after the job was over"


def test_submit_signs_with_the_key_it_is_given(broker: str, topics: Topics,
                                               tmp_path: Path) -> None:
    cfg = KafkaConfig(bootstrap_servers=broker)
    ensure_topics(cfg, topics.shared())
    env = {"AIF_KAFKA__BOOTSTRAP_SERVERS": broker, "AIF_TOPIC_PREFIX": topics.prefix,
           "AIF_HOME": str(tmp_path), "AIF_SIGNING_SECRET": "s3cret"}
    half = CliRunner().invoke(app, ["submit", "grid-ticket-routing"], env=env)
    assert half.exit_code == 2
    assert "--signing-key-id and --signing-secret" in half.output
    result = CliRunner().invoke(app, ["submit", "grid-ticket-routing", "--tenant", "acme",
                                      "--signing-key-id", "k1"], env=env)
    assert result.exit_code == 0, result.output
    consumer = make_consumer(cfg, topics.requests, group_id=None, consumer_timeout_ms=10_000)
    record = next(iter(consumer))
    consumer.close()
    assert signing_headers(record.headers) == (
        "k1", dict(record.headers)[SIGNATURE_HEADER])
    assert verify(record.value, dict(record.headers)[SIGNATURE_HEADER], "s3cret")
    event = CloudEvent.from_bytes(record.value)
    assert f"submitted job {job_id_for('acme', event.source, event.id)}" in result.output


def test_the_demo_signs_with_a_key_of_its_own_job_store(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path)
    first = _demo_signing_key(settings, "demo")
    assert _demo_signing_key(settings, "demo") == first  # the tenant is made once
    with session_factory(settings.db_url)() as s:
        assert signing_secret(s, first.id) == ("demo", first.secret)
