"""Following a job on the real embedded broker: when `--wait` stops, and matching by request.

Events are built as the orchestrator builds them (`job_envelope`) and published in the
orders the outbox produces, with short gaps, while the follower runs.
"""

from __future__ import annotations

import threading
import time
import uuid
from datetime import UTC, datetime

import pytest
from sqlalchemy.orm import Session

from aif.db.models import Job, Outbox
from aif.follow import follow_job, wait_for_job
from aif.jobstore.outbox import job_envelope
from aif.jobstore.transitions import transition
from events.bus import KafkaConfig, ensure_topics, envelope, make_producer, publish
from events.client import follow_request
from events.envelope import CloudEvent
from events.messages import (
    EvaluationCompleted,
    GateDecision,
    JobEvent,
    JobProgress,
    JobStatusChanged,
    MetricScore,
    ModelReady,
)
from events.states import JobState
from events.topics import Topics

S = JobState
GAP_S = 0.3
PROMPT_S = 20.0
"""Well under the grace the tests give (60 s), and far above a poll's latency on a loaded
box: a follower that waits for an event that will never come fails, one that returns before
the last event it needs fails too."""


def _job(tenant: str = "acme", request_id: str | None = None) -> Job:
    request_id = request_id or str(uuid.uuid4())
    return Job(id=f"job-{tenant}-{request_id}", tenant=tenant,
               request_source="urn:test:partner", request_id=request_id)


def _status(job: Job, previous: JobState | None, state: JobState) -> JobStatusChanged:
    return JobStatusChanged(job_id=job.id, tenant=job.tenant, state=state,
                            previous_state=previous, at=datetime.now(UTC))


def _evaluated(job: Job, passed: bool) -> EvaluationCompleted:
    return EvaluationCompleted(
        job_id=job.id, tenant=job.tenant,
        scores=[MetricScore(task="t", metric="acc", base=0.5, tuned=0.7)],
        gate=GateDecision(passed=passed, reason="gain 0.2"))


def _ready(job: Job) -> ModelReady:
    return ModelReady(job_id=job.id, tenant=job.tenant, base_model="m",
                      adapter_uri="file:///adapter", files_sha256={"a": "0" * 64}, scores=[])


def _path(job: Job, *states: JobState) -> list[JobEvent]:
    return [_status(job, prev, to) for prev, to in zip((None, *states), states, strict=False)]


def _sequences(j: Job) -> dict[str, tuple[list[JobEvent], JobState, int]]:
    """Name -> (events in publication order, final state, index of the last one needed)."""
    trained = _path(j, S.validating, S.queued, S.training)
    progress = JobProgress(job_id=j.id, stage="training", step=1, total_steps=2)
    ev = _status(j, S.training, S.evaluating)
    return {
        "validating-rejected": (_path(j, S.validating, S.rejected), S.rejected, 1),
        "queued-failed": (_path(j, S.validating, S.queued, S.failed), S.failed, 2),
        "training-failed": ([*trained, progress, _status(j, S.training, S.failed)], S.failed, 4),
        "evaluating-failed": ([*trained, ev, _status(j, S.evaluating, S.failed)], S.failed, 4),
        "succeeded": ([*trained, progress, ev, _evaluated(j, True),
                       _status(j, S.evaluating, S.handing_off), _ready(j),
                       _status(j, S.handing_off, S.succeeded)], S.succeeded, 8),
        "succeeded, model.ready read last": (
            [*trained, ev, _evaluated(j, True), _status(j, S.evaluating, S.handing_off),
             _status(j, S.handing_off, S.succeeded), _ready(j)], S.succeeded, 7),
        "gate rejected, evaluation.completed read last": (
            [*trained, ev, _status(j, S.evaluating, S.rejected), _evaluated(j, False)],
            S.rejected, 5),
        "hand-off failed": (
            [*trained, ev, _status(j, S.evaluating, S.handing_off),
             _status(j, S.handing_off, S.failed), _evaluated(j, True)], S.failed, 6),
    }


def _publish_later(cfg: KafkaConfig, topics: Topics, events: list[JobEvent],
                   jobs: dict[str, Job]) -> tuple[threading.Thread, list[float]]:
    """Publish each event (status ones to the status topic) after a gap; record ack times."""
    acked: list[float] = []

    def run() -> None:
        producer = make_producer(cfg)
        try:
            for data in events:
                time.sleep(GAP_S)
                on_status = isinstance(data, JobStatusChanged | JobProgress)
                job = jobs[data.job_id]
                topic = (topics.status if on_status else topics.models)(job.tenant)
                publish(producer, topic, job_envelope(data, job), key=job.id)
                acked.append(time.monotonic())
        finally:
            producer.close()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, acked


@pytest.fixture
def cfg(broker: str, topics: Topics) -> KafkaConfig:
    cfg = KafkaConfig(bootstrap_servers=broker)
    ensure_topics(cfg, topics.of_tenant("acme"))
    return cfg


@pytest.mark.parametrize("name", list(_sequences(_job())))
def test_wait_returns_right_after_the_last_event_the_job_promises(
    cfg: KafkaConfig, topics: Topics, name: str
) -> None:
    job, other = _job(), _job()
    events, final, last_needed = _sequences(job)[name]
    noise = _path(other, S.validating, S.rejected)  # another job ends first: not this one
    thread, acked = _publish_later(cfg, topics, [*noise, *events], {job.id: job, other.id: other})

    watch = wait_for_job(cfg, topics, "acme", job.id, timeout_s=60, grace_s=60)
    returned = time.monotonic()
    thread.join(10)

    assert watch.final is final and watch.over
    last = acked[len(noise) + last_needed]
    assert returned >= last, "returned before the last event it needed was published"
    assert returned - last < PROMPT_S, f"returned {returned - last:.1f}s after the last event"
    assert {e.job_id for e in watch.events} == {job.id}
    ended_evaluating = any(isinstance(e, JobStatusChanged) and e.previous_state is S.evaluating
                           and e.state in (S.handing_off, S.rejected) for e in events)
    assert any(isinstance(e, EvaluationCompleted) for e in watch.events) == ended_evaluating
    assert any(isinstance(e, ModelReady) for e in watch.events) == (final is S.succeeded)


def test_a_missing_outcome_event_is_given_up_after_the_grace(
    cfg: KafkaConfig, topics: Topics
) -> None:
    job = _job()
    events = _path(job, S.validating, S.queued, S.training, S.evaluating, S.handing_off,
                   S.succeeded)  # no model.ready ever comes
    thread, acked = _publish_later(cfg, topics, events, {job.id: job})
    watch = wait_for_job(cfg, topics, "acme", job.id, timeout_s=60, grace_s=1)
    thread.join(10)
    assert watch.final is S.succeeded and watch.missing() == [EvaluationCompleted, ModelReady]
    assert time.monotonic() - acked[-1] < PROMPT_S


def test_transitions_carry_the_request_and_a_partner_follows_by_it(
    cfg: KafkaConfig, topics: Topics
) -> None:
    """The orchestrator's own path: transition -> outbox row -> bus -> follow by request.
    Another tenant's job for a request of the same source and id goes to that tenant's
    topics, so acme's follower never reads it."""
    mine = _job()
    other = _job("globex", mine.request_id)
    session = Session()  # never flushed: the outbox rows are read back from session.new
    for job in (mine, other):
        for state in (S.validating, S.queued):
            transition(session, job, state, topics)
    rows = [o for o in session.new if isinstance(o, Outbox)]
    assert {(r.key, r.topic) for r in rows} == {(mine.id, topics.status("acme")),
                                                (other.id, topics.status("globex"))}
    producer = make_producer(cfg)
    for row in rows:
        producer.send(row.topic, key=row.key.encode(), value=row.payload.encode()).get(30)
    progress = JobProgress(job_id=mine.id, stage="training", step=1, total_steps=2)
    publish(producer, topics.status("acme"), job_envelope(progress, mine), key=mine.id)
    # An event from before the request fields existed: matched by job id, not by request.
    old = envelope(_status(mine, S.queued, S.training), source="urn:aif-tuning:orchestrator",
                   tenant="acme", subject=mine.id)
    publish(producer, topics.status("acme"), old, key=mine.id)
    producer.close()

    sent = [CloudEvent.model_validate_json(r.payload) for r in rows if r.key == mine.id]
    assert {(e.requestsource, e.requestid) for e in sent} == {(mine.request_source,
                                                                mine.request_id)}
    assert all(e.data["request_id"] == mine.request_id for e in sent)

    request = CloudEvent(id=mine.request_id, source=mine.request_source, type="x")
    by_request = _read(follow_request(cfg, request, tenant="acme", topics=topics, timeout_s=20), 3)
    assert [type(e).__name__ for e in by_request] == ["JobStatusChanged"] * 2 + ["JobProgress"]
    assert {(e.request_source, e.request_id) for e in by_request} == {
        (mine.request_source, mine.request_id)}
    assert _read(follow_job(cfg, topics, "acme", request=request, timeout_s=20), 3) == by_request
    assert len(_read(follow_job(cfg, topics, "acme", mine.id, timeout_s=20), 4)) == 4


def _read(events, n: int) -> list:
    """The first n events, then stop following."""
    seen = []
    for ev in events:
        if ev is not None:
            seen.append(ev)
            if len(seen) == n:
                events.close()
                return seen
    raise AssertionError("unreachable: follow raises TimeoutError")


def test_a_follower_reads_the_status_topic_before_the_models_topic_exists(
    broker: str, topics: Topics
) -> None:
    """A tenant's models topic comes with its first model, which a rejected job never has:
    the follower reads the status topic meanwhile and takes the models topic when it comes."""
    cfg = KafkaConfig(bootstrap_servers=broker)
    ensure_topics(cfg, [topics.status("acme")])
    rejected, passed = _job(), _job()
    thread, _ = _publish_later(cfg, topics, _path(rejected, S.validating, S.rejected),
                               {rejected.id: rejected})
    watch = wait_for_job(cfg, topics, "acme", rejected.id, timeout_s=60, grace_s=1)
    thread.join(10)
    assert watch.final is S.rejected

    follower = follow_job(cfg, topics, "acme", passed.id, timeout_s=60)
    assert next(follower) is None  # following, with the models topic still absent
    ensure_topics(cfg, [topics.models("acme")])
    thread, _ = _publish_later(cfg, topics, [_ready(passed)], {passed.id: passed})
    assert isinstance(next(e for e in follower if e is not None), ModelReady)
    thread.join(10)
    follower.close()
