"""What may be done to a stored job from outside its worker: cancel, reject, retire.

Intake (Kafka), the HTTP API, the model registry and erasure all call these, so each rule is
written once: which states may still be cancelled, what a refused request leaves behind, how
a withdrawn model is announced. Each writes into the caller's transaction; the caller locks
and commits.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from aif import audit
from aif.db.models import Job, RegisteredModel, utcnow
from aif.jobstore.outbox import SOURCE, enqueue, enqueue_event
from aif.jobstore.transitions import ALLOWED, transition
from events.bus import envelope
from events.envelope import CloudEvent
from events.messages import ModelRetired
from events.states import JobState
from events.topics import Topics

ERASED = "tenant-erased"
"""Reason (prefix) of what an erasure ends: an erased tenant's events are neither stored nor
forwarded, only counted, so a replay cannot bring erased data back; its models are retired
with it."""

RECEIVED = "request received; refused at intake"
"""Reason of the `validating` step of a job whose request intake refused (then `rejected`)."""


def cancellable(job: Job) -> bool:
    return JobState.cancelled in ALLOWED[JobState(job.state)]


def cancel(session: Session, job: Job, topics: Topics, reason: str, actor: str,
           **detail: Any) -> bool:
    """Cancel through the state machine, after the `cancel` audit row (`detail`: the asking
    event's id and digest); False, with nothing written, if the job is past cancelling. A
    worker running the job sees the state change at its next heartbeat and stops the stage."""
    if not cancellable(job):
        return False
    audit.record(session, audit.Action.cancel, actor=actor, tenant=job.tenant, job_id=job.id,
                 **detail)
    transition(session, job, JobState.cancelled, topics, reason, actor=actor)
    return True


def end(session: Session, job: Job, topics: Topics, reason: str, actor: str) -> None:
    """End a job still running, whatever its state: cancelled, or failed once past cancelling
    (handing off). An erasure's: its own single audit row says who asked."""
    if not JobState(job.state).terminal:
        to = JobState.cancelled if cancellable(job) else JobState.failed
        transition(session, job, to, topics, reason, actor=actor)


def reject(session: Session, job: Job, topics: Topics, reason: str) -> None:
    """End a new job whose request intake refused, `validating` then `rejected`, so its
    tenant reads why at the job's URL and on its status topic."""
    transition(session, job, JobState.validating, topics, reason=RECEIVED)
    transition(session, job, JobState.rejected, topics, reason=reason)


def rejected_at_intake(job: Job) -> bool:
    """A job `reject` ended (see `RECEIVED`)."""
    return (job.state == JobState.rejected and bool(job.transitions)
            and job.transitions[0].reason == RECEIVED)


def retire(session: Session, topics: Topics, job: Job, reason: str,
           version: RegisteredModel | None = None, actor: str = audit.SERVICE) -> CloudEvent:
    """Announce the job's model withdrawn (`model.retired`) through the outbox.

    A registry `version` (already marked retired) is announced as an event about its job,
    with an audit row by `actor`. Without one the job is being erased: the event outlives
    its rows, so it names neither the request nor its data, and the erasure's single audit
    row lists it.
    """
    if version is None:
        data = ModelRetired(job_id=job.id, tenant=job.tenant, adapter_uri=job.adapter_uri,
                            reason=reason, at=utcnow())
        return enqueue(session, topics.models(job.tenant), job.id, envelope(
            data, source=SOURCE, tenant=job.tenant, subject=job.id,
            event_id=f"{job.id}:model-retired"))
    event = enqueue_event(session, topics.models, ModelRetired(
        job_id=job.id, tenant=version.tenant, adapter_uri=version.adapter_uri, reason=reason,
        at=version.retired_at, name=version.name, version=version.version), job=job,
        event_id=f"{job.id}:model-retired:v{version.version}")
    audit.record(session, audit.Action.retire, actor=actor, tenant=version.tenant,
                 job_id=job.id, event_id=event.id, payload_sha256=audit.sha256(event.to_bytes()),
                 name=version.name, version=version.version, reason=reason)
    return event
