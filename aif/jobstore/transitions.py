"""The job state machine. The table below is the whole truth about which moves are legal.

| from         | to                                            |
|--------------|-----------------------------------------------|
| (new)        | validating                                    |
| validating   | queued, rejected, cancelled                   |
| queued       | training, cancelled, failed                   |
| training     | evaluating, failed, cancelled                 |
| evaluating   | handing_off, rejected, failed, cancelled      |
| handing_off  | succeeded, failed                             |
| terminal     | nothing                                       |

Every transition is stored together with its status event in the outbox, in the caller's
transaction, so the event is published if and only if the state change was committed.
"""

from __future__ import annotations

from sqlalchemy.orm import Session

from aif import audit
from aif.db.models import Job, Transition, utcnow
from aif.jobstore.outbox import enqueue_event
from events.messages import JobStatusChanged
from events.states import JobState
from events.topics import Topics

S = JobState
ALLOWED: dict[JobState | None, frozenset[JobState]] = {
    None: frozenset({S.validating}),
    S.validating: frozenset({S.queued, S.rejected, S.cancelled}),
    S.queued: frozenset({S.training, S.cancelled, S.failed}),
    S.training: frozenset({S.evaluating, S.failed, S.cancelled}),
    S.evaluating: frozenset({S.handing_off, S.rejected, S.failed, S.cancelled}),
    S.handing_off: frozenset({S.succeeded, S.failed}),
    S.succeeded: frozenset(),
    S.failed: frozenset(),
    S.cancelled: frozenset(),
    S.rejected: frozenset(),
}


class IllegalTransition(RuntimeError):
    """A bug: code tried a move the table does not allow."""


def transition(
    session: Session, job: Job, to: JobState, topics: Topics, reason: str = "",
    actor: str = audit.SERVICE,
) -> None:
    """Move the job, with its status event and audit row; `actor` is who asked for it."""
    current = JobState(job.state) if job.state else None
    if to not in ALLOWED[current]:
        raise IllegalTransition(f"job {job.id}: {current} -> {to} is not allowed")
    now = utcnow()
    job.state, job.reason, job.updated_at = to.value, reason, now
    session.add(Transition(job=job, from_state=current, to_state=to, reason=reason, at=now))
    status = JobStatusChanged(
        job_id=job.id, tenant=job.tenant, state=to, previous_state=current, reason=reason, at=now
    )
    # The event id is derived from the transition, so a re-sent outbox row is recognisable.
    event = enqueue_event(session, topics.status, status, job=job,
                          event_id=f"{job.id}:{len(job.transitions)}:{to}")
    audit.record(session, audit.Action.state, actor=actor, tenant=job.tenant, job_id=job.id,
                 event_id=event.id, payload_sha256=audit.sha256(event.to_bytes()),
                 from_state=current and current.value, to_state=to.value)


def final_state(state: JobState) -> JobState:
    """Where a final error ends a job: nothing was trained yet -> rejected, else failed."""
    return JobState.rejected if state is JobState.validating else JobState.failed


def advance(session: Session, job: Job, to: JobState, topics: Topics, reason: str = "") -> None:
    """Move the job on; a new state starts with a fresh count of attempts."""
    job.attempts, job.next_attempt_at = 0, None
    transition(session, job, to, topics, reason)
