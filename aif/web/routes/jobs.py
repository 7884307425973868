"""Jobs: submit, list, look up, follow, cancel and publish, each scoped to the caller.

A submission is published as the very request event a Kafka partner would send, signed with
the tenant's signing key, so intake is the one way a job comes to exist and HTTP partners
get exactly the validation, de-duplication and admission Kafka partners get. What intake
would refuse on the request alone is refused here first, by intake's own functions
(`admission.read_event` and `admission.screen`), with a problem document naming field and
rule instead of a 202 for a job that would never appear: 413 for the size, 429 for a quota
with nothing left, 422 for the rest. What only the worker can refuse (files, data) ends the
job `rejected` with the reason, readable at its URL.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, Field, StringConstraints
from sqlalchemy import ColumnElement, and_, or_, select
from sqlalchemy.orm import Session, sessionmaker

from aif import audit
from aif.db.models import Job, Outbox, SigningKey
from aif.jobstore.commands import cancel
from aif.launchers import get_launcher
from aif.orchestrator.admission import Admission, Refusal, Rule, read_event, screen
from aif.orchestrator.references import References
from aif.orchestrator.scores import metric_score
from aif.orchestrator.throughput import Measured
from aif.settings import Settings
from aif.web.deps import (
    BusDep,
    CurrentTenant,
    JobDep,
    OwnJobDep,
    Problem,
    SessionDep,
    SettingsDep,
    UtcDateTime,
    problems,
    tenant_scope,
)
from events.bus import envelope
from events.envelope import job_id_for
from events.messages import FineTuneRequested, JobStatusChanged, MetricScore
from events.signing import sign
from events.states import JobState
from stagefiles.preflight_report import Estimate, PreflightReport

log = logging.getLogger(__name__)
router = APIRouter(prefix="/v1/jobs", tags=["jobs"], responses=problems(401))

SOURCE = "urn:aif-tuning:api"
"""CloudEvents `source` of requests submitted over HTTP."""

POLL_S = 0.5
"""How often the event stream looks for new events of its job."""
KEEPALIVE_S = 15.0
"""A comment line this often while nothing happens, so proxies keep the stream open."""


class JobCreate(FineTuneRequested):
    """The data of a `finetune.requested` event: HTTP and Kafka partners send the same.
    Exactly one of `recipe` and `recipe_inline`; at most one of `train_file`, `dataset` and
    `file_id`, and of `eval_file` and `eval_split` (the schema's `oneOf` and `not`)."""


class JobAccepted(BaseModel):
    id: str
    url: str
    request_source: str
    request_id: str = Field(description="The CloudEvents id: the Idempotency-Key if given.")


class TransitionPublic(BaseModel):
    from_state: str | None
    to_state: str
    reason: str
    at: UtcDateTime


class ScorePublic(MetricScore):
    """A score as `evaluation.completed` carried it (class figures and the gate's paired
    comparisons included), with the documents it was measured on."""

    samples: int


class JobPublic(BaseModel):
    id: str
    tenant: str
    request_source: str
    request_id: str
    recipe: str | None
    labels: dict[str, str]
    state: str
    reason: str
    public: bool
    adapter_uri: str | None
    gate_passed: bool | None
    gate_reason: str | None
    estimate: Estimate | None = Field(description="The pre-flight's compute estimate, kept "
                                      "once the job was queued.")
    measured: Measured | None = Field(description="What training measured, once trained.")
    created_at: UtcDateTime
    updated_at: UtcDateTime

    @classmethod
    def of(cls, job: Job, **extra: Any) -> JobPublic:
        return cls(
            id=job.id, tenant=job.tenant, request_source=job.request_source,
            request_id=job.request_id, recipe=job.recipe_name,
            labels=job.request.get("data", {}).get("labels", {}), state=job.state,
            reason=job.reason, public=job.public, adapter_uri=job.adapter_uri,
            gate_passed=job.gate_passed, gate_reason=job.gate_reason,
            estimate=job.estimate or None, measured=job.measured or None,
            created_at=job.created_at, updated_at=job.updated_at, **extra)


class JobPublicWithHistory(JobPublic):
    transitions: list[TransitionPublic]
    scores: list[ScorePublic]


class JobsPublic(BaseModel):
    data: list[JobPublic]
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page; "
                                    "null on the last one.")


class JobCancel(BaseModel):
    reason: str = Field("", max_length=500)


def _url(request: Request, job_id: str) -> str:
    return str(request.url_for("get_job", job_id=job_id))


def _signing_key(session: Session, tenant: str) -> SigningKey:
    key = session.scalar(select(SigningKey).where(
        SigningKey.tenant == tenant, SigningKey.revoked_at.is_(None),
    ).order_by(SigningKey.created_at.desc(), SigningKey.id).limit(1))
    if key is None:
        raise Problem(403, "Forbidden", "this tenant has no unrevoked signing key to sign its "
                      "requests with; an operator can add one")
    return key


def _admission(request: Request, settings: Settings) -> Admission:
    """The orchestrator's own admission where the service put it beside the app
    (`app.state.admission`), else one from the settings. The local launcher's process limit
    is the orchestrator machine's, which a web-only deployment cannot know: intake checks it
    there (and a refusal leaves a `rejected` job)."""
    admission = getattr(request.app.state, "admission", None)
    if admission is None:
        max_processes = (None if settings.launcher == "local"
                         else get_launcher(settings.launcher, settings).max_processes)
        admission = request.app.state.admission = Admission(
            max_processes, References.of(settings), settings.quota_defaults)
    return admission


_REFUSED = {Rule.size: (413, "Content too large"), Rule.quota: (429, "Too many requests")}
"""Status and title of a refusal by its rule; every other rule: 422."""


def _refused(refusal: Refusal) -> Problem:
    """The problem document of a request intake would refuse: its reason names the field
    and rule, never the value sent."""
    status, title = _REFUSED.get(refusal.rule, (422, "Invalid request"))
    field = refusal.field
    detail = refusal.reason if field is not None else f"body: {refusal.reason}"
    return Problem(status, title, detail, field=field or "body")


@router.post("", status_code=202, responses=problems(403, 409, 422, 429, 503))
def create_job(
    body: JobCreate, principal: CurrentTenant, session: SessionDep, bus: BusDep,
    settings: SettingsDep, request: Request, response: Response,
    idempotency_key: Annotated[str | None, Header(
        pattern=r"^[!-~]{1,200}$",
        description="Becomes the request's CloudEvents id: the same key again gives the "
                    "same job. Printable ASCII without spaces, at most 200 characters.")] = None,
) -> JobAccepted:
    """Publish the request to the requests topic; the job appears once intake stored it."""
    event = envelope(body, source=SOURCE, tenant=principal.tenant, event_id=idempotency_key)
    job_id = job_id_for(principal.tenant, event.source, event.id)
    accepted = JobAccepted(id=job_id, url=_url(request, job_id), request_source=event.source,
                           request_id=event.id)
    response.headers["Location"] = accepted.url
    stored = session.scalar(select(Job).where(
        Job.tenant == principal.tenant, Job.request_source == event.source,
        Job.request_id == event.id))
    if stored is not None:  # a retry of a stored request: nothing to send again
        if stored.request.get("data") != event.data:
            raise Problem(409, "Conflict", "this Idempotency-Key was used for a different "
                          "request", field="Idempotency-Key")
        return accepted
    value = event.to_bytes()
    # Intake's checks, on the very bytes it would read: refused here, nothing is published.
    screened = read_event(value)
    if not isinstance(screened, Refusal):
        screened = screen(session, screened, principal.tenant, _admission(request, settings))
    if isinstance(screened, Refusal):
        raise _refused(screened)
    key = _signing_key(session, principal.tenant)
    try:
        bus.publish(value, key=job_id, headers=sign(value, key.id, key.secret))
    except Exception as exc:
        log.warning("publishing request %s failed: %s", event.id, exc)
        raise Problem(503, "Service unavailable", "the broker did not take the request; it "
                      "was not submitted (send it again, with the same Idempotency-Key)") from exc
    return accepted


def _encode_cursor(job: Job) -> str:
    at = job.created_at
    at = at.replace(tzinfo=UTC) if at.tzinfo is None else at  # SQLite reads back naive UTC
    raw = json.dumps([at.astimezone(UTC).isoformat(), job.id]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _after_cursor(cursor: str) -> ColumnElement[bool]:
    try:
        at_text, job_id = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        at = datetime.fromisoformat(at_text).astimezone(UTC)
        if not isinstance(job_id, str):
            raise TypeError(job_id)
    except (binascii.Error, ValueError, TypeError) as exc:
        raise Problem(422, "Invalid request", "not a cursor this API returned",
                      field="cursor") from exc
    return or_(Job.created_at < at, and_(Job.created_at == at, Job.id < job_id))


LabelFilter = Annotated[str, StringConstraints(pattern=r"^[^=]+=")]
"""A `label` filter of the job list: key=value."""


def _label_filter(label: str) -> ColumnElement[bool]:
    key, _, value = label.partition("=")  # the parameter's pattern: key=value
    return Job.request["data"]["labels"][key].as_string() == value


@router.get("", responses=problems(422))
def list_jobs(
    principal: CurrentTenant, session: SessionDep,
    state: JobState | None = None, recipe: str | None = None,
    label: Annotated[list[LabelFilter] | None, Query(
        description="key=value; repeat it for jobs carrying every one of them.")] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[str | None, Query(max_length=500, description="`next_cursor` of the "
                                        "previous page.")] = None,
) -> JobsPublic:
    """The caller's jobs (staff: every tenant's), newest first."""
    query = select(Job).where(tenant_scope(principal, Job.tenant))
    if state is not None:
        query = query.where(Job.state == state.value)
    if recipe is not None:
        query = query.where(Job.recipe_name == recipe)
    for item in label or []:
        query = query.where(_label_filter(item))
    if cursor is not None:
        query = query.where(_after_cursor(cursor))
    jobs = session.scalars(query.order_by(Job.created_at.desc(), Job.id.desc())
                           .limit(limit + 1)).all()
    page = jobs[:limit]
    return JobsPublic(data=[JobPublic.of(j) for j in page],
                      next_cursor=_encode_cursor(page[-1]) if len(jobs) > limit else None)


@router.get("/{job_id}", responses=problems(404))
def get_job(job: JobDep) -> JobPublicWithHistory:
    return JobPublicWithHistory.of(
        job,
        transitions=[TransitionPublic(from_state=t.from_state, to_state=t.to_state,
                                      reason=t.reason, at=t.at) for t in job.transitions],
        scores=[ScorePublic(**metric_score(s).model_dump(), samples=s.samples)
                for s in job.scores])


@router.get("/{job_id}/preflight", response_model=None,
            responses={200: {"model": PreflightReport}, **problems(404)})
def get_job_preflight(job: JobDep) -> JSONResponse:
    """The job's pre-flight report (rows, tokens, rendered examples, duplicates, overlap)."""
    if job.preflight is None:
        raise Problem(404, "Not found", f"job {job.id} has no pre-flight report yet",
                      field="job_id")
    return JSONResponse(job.preflight)


def _next_events(sessions: sessionmaker[Session], job_id: str, after: int
                 ) -> tuple[list[tuple[int, str]], bool]:
    """Events of the job after outbox row `after`, and whether the job's stream is over."""
    with sessions() as session:
        # The state first: rows committed with a terminal state are then read below.
        state = session.scalar(select(Job.state).where(Job.id == job_id))
        rows = [(r.id, r.payload) for r in session.execute(
            select(Outbox.id, Outbox.payload).where(Outbox.key == job_id, Outbox.id > after)
            .order_by(Outbox.id).limit(500))]
    over = any(_is_final_status(payload) for _, payload in rows) or (
        not rows and (state is None or JobState(state).terminal))
    return rows, over


def _is_final_status(payload: str) -> bool:
    event = json.loads(payload)
    return (event.get("type") == JobStatusChanged.TYPE
            and JobState(event["data"]["state"]).terminal)


async def _stream(sessions: sessionmaker[Session], job_id: str, after: int,
                  disconnected: Callable[[], Any]) -> AsyncIterator[str]:
    quiet_since = time.monotonic()
    while True:
        rows, over = await run_in_threadpool(_next_events, sessions, job_id, after)
        for row_id, payload in rows:
            yield f"id: {row_id}\ndata: {payload}\n\n"
            after = row_id
        if over:
            return
        if rows:
            quiet_since = time.monotonic()
            continue
        if await disconnected():
            return
        if time.monotonic() - quiet_since >= KEEPALIVE_S:
            yield ": keep-alive\n\n"
            quiet_since = time.monotonic()
        await asyncio.sleep(POLL_S)


SERVER_SENT_EVENT = {
    "type": "object",
    "description": "One event of the stream (before OpenAPI 3.2, the `schema` of "
                   "text/event-stream describes each event, as 3.2's `itemSchema` does).",
    "required": ["id", "data"],
    "properties": {
        "id": {"type": "string", "pattern": "^[0-9]+$",
               "description": "The position to resume from (`Last-Event-ID`)."},
        "event": {"type": "string", "const": "message"},
        "data": {"type": "string", "contentMediaType": "application/json",
                 "contentSchema": {
                     "type": "object", "required": ["specversion", "id", "source", "type",
                                                    "subject", "tenant", "data"],
                     "description": "A CloudEvent of the job (events/schemas/ in the "
                                    "repository: the envelope and each type's data)."}},
    },
}
"""What `GET /v1/jobs/{job_id}/events` sends, event by event."""


@router.get("/{job_id}/events", response_class=StreamingResponse, responses={
    200: {"content": {"text/event-stream": {"schema": SERVER_SENT_EVENT}},
          "description": "Server-Sent Events: each `data:` is a CloudEvent of the job, its "
                         "`id:` the position to resume from; `:` lines keep the connection "
                         "open. The stream ends after the job's final status."},
    **problems(404, 422)})
async def job_events(
    job: JobDep, request: Request,
    last_event_id: Annotated[int | None, Header(
        ge=0, le=2**63 - 1,  # a database integer: larger ones overflowed mid-stream
        description="Resume after this event (the `id:` of the last one received).")]
    = None,
) -> StreamingResponse:
    """Every event of the job (status, progress, evaluation, model ready) as they are
    written, ending after its final status."""
    return StreamingResponse(
        _stream(request.app.state.sessions, job.id, last_event_id or 0,
                request.is_disconnected),
        media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


@router.post("/{job_id}/cancel", responses=problems(403, 404, 409, 422))
def cancel_job(job: OwnJobDep, principal: CurrentTenant, session: SessionDep,
               settings: SettingsDep, body: JobCancel | None = None) -> JobPublic:
    """Cancel through the state machine; a running stage is stopped at its next heartbeat."""
    session.refresh(job, with_for_update=True)  # no worker moves it on meanwhile
    if not cancel(session, job, settings.topics,
                  (body.reason if body else "") or "cancelled through the API",
                  audit.api_actor(principal.key_id)):
        raise Problem(409, "Conflict", f"the job is {job.state} and can no longer be cancelled",
                      field="job_id")
    session.commit()
    return JobPublic.of(job)


@router.post("/{job_id}/publish", responses=problems(403, 404))
def publish_job(job: OwnJobDep, principal: CurrentTenant, session: SessionDep) -> JobPublic:
    """Show the job's scores to every tenant (never its data, reports or samples)."""
    job.public = True
    audit.record(session, audit.Action.publish, actor=audit.api_actor(principal.key_id),
                 tenant=job.tenant, job_id=job.id)
    session.commit()
    return JobPublic.of(job)
