"""The outbox: every event the service sends is a row here first, written in the transaction
that made it true; the relay (`aif.orchestrator.relay`) publishes the rows afterwards.

Every event about a job names the job's request (see `job_envelope`).
"""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy.orm import Session

from aif.db import appends
from aif.db.models import Job, Outbox
from events.bus import envelope
from events.envelope import CloudEvent
from events.messages import JobEvent, RequestEvent

SOURCE = "urn:aif-tuning:orchestrator"
"""CloudEvents `source` of every event the service sends about a job."""


def job_envelope(data: JobEvent, job: Job, event_id: str | None = None) -> CloudEvent:
    """The CloudEvent for an event about `job`, with the job's request source and id set in
    the data and as extension attributes: taken from the job here, so no call site can omit
    them or disagree with the envelope."""
    data = data.model_copy(
        update={"request_source": job.request_source, "request_id": job.request_id})
    return answer_envelope(data, job.tenant, job.id, event_id)


def answer_envelope(data: RequestEvent, tenant: str, subject: str,
                    event_id: str | None = None) -> CloudEvent:
    """The CloudEvent of an answer to a request, the request's source and id (those in the
    data) also its extension attributes."""
    event = envelope(data, source=SOURCE, tenant=tenant, subject=subject, event_id=event_id)
    return event.model_copy(update=data.extensions())


def enqueue(session: Session, topic: str, job_id: str, event: CloudEvent) -> CloudEvent:
    """Queue `event` on `topic`, keyed by the job it is about (the relay's partition key; a
    `request.refused`: the refused record)."""
    appends.add(session, Outbox, topic=topic, key=job_id, payload=event.to_bytes().decode())
    return event


def enqueue_event(
    session: Session, topic_of: Callable[[str], str], data: JobEvent, *, job: Job,
    event_id: str | None = None,
) -> CloudEvent:
    """Queue an event about `job` on its tenant's topic (`topic_of`: `Topics.status` or
    `Topics.models`), so no call site can send one tenant's news to another's readers."""
    return enqueue(session, topic_of(job.tenant), job.id, job_envelope(data, job, event_id))
