"""A person's jobs and one job's page: timeline, pre-flight report, loss curve (and the reward
curves of a dpo or orpo job), evaluation, gate, lineage and hand-off, kept live through the
job's event stream.

The page needs a signed-in tenant (staff: any tenant's job); another tenant's job is as
absent as one that never existed, as in the API. A published job's page is open to anyone,
as its leaderboard row is, and then shows what the leaderboard does and no more: states,
loss curve, scores and gate, recipe and base model; not its tenant, data, pre-flight
report, files, frozen recipe or where the adapter is. The event stream and artifact
downloads are the API's own handlers, reached with the session instead of a bearer key,
since a browser's EventSource and links cannot send one; they stay the tenant's.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated
from urllib.parse import quote

from fastapi import APIRouter, Depends, Header, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response, StreamingResponse
from sqlalchemy import select

from aif.db.models import Job, Outbox
from aif.orchestrator.scores import metric_score
from aif.tenants import Principal
from aif.web.deps import Problem, SessionDep, SettingsDep, readable, tenant_scope
from aif.web.pages import board, job_files
from aif.web.pages.render import page
from aif.web.pages.sessions import COOKIE, Viewer, principal_of
from aif.web.routes import artifacts, jobs
from events.messages import JobProgress, ModelReady
from events.states import JobState
from stagefiles.preflight_report import PreflightReport

router = APIRouter()


class SignInFirst(Exception):
    def __init__(self, path: str) -> None:
        self.path = path


def signed_in(request: Request, who: Viewer) -> Principal:
    if who is None:
        raise SignInFirst(request.url.path)
    return who


SignedIn = Annotated[Principal, Depends(signed_in)]


def redirect_to_signin(_: Request, exc: SignInFirst) -> Response:
    return RedirectResponse(f"/signin?next={quote(exc.path)}", status_code=303)


class PageNotFound(Exception):
    def __init__(self, detail: str) -> None:
        self.detail = detail


def page_job(job_id: str, who: SignedIn, session: SessionDep) -> Job:
    try:
        return readable(session, Job, job_id, who, "job_id")
    except Problem as exc:
        raise PageNotFound(str(exc.detail)) from exc


PageJob = Annotated[Job, Depends(page_job)]


@dataclass(frozen=True)
class Shown:
    job: Job
    whole: bool  # the reader may read the job's tenant; else it is published: its public part


def shown_job(request: Request, job_id: str, who: Viewer, session: SessionDep) -> Shown:
    """The job for its page: whole to its tenant and staff; a published one's public part to
    anyone else; otherwise sign in first (signed out) or not found (signed in)."""
    if who is not None:
        try:
            return Shown(readable(session, Job, job_id, who, "job_id"), whole=True)
        except Problem as exc:
            missing = PageNotFound(str(exc.detail))
    else:
        missing = SignInFirst(request.url.path)
    job = session.get(Job, job_id)
    if job is not None and job.public:
        return Shown(job, whole=False)
    raise missing


@dataclass
class Step:
    state: str
    reason: str
    at: datetime
    seconds: float | None  # until the next state; None for a state still current


def _timeline(job: Job) -> list[Step]:
    moves = job.transitions
    return [Step(t.to_state, t.reason, t.at,
                 (moves[i + 1].at - t.at).total_seconds() if i + 1 < len(moves) else None)
            for i, t in enumerate(moves)]


def _events(job: Job, session: SessionDep
            ) -> tuple[list[dict[str, float | None]], bool, int]:
    """Training progress points (from the job's JobProgress events), whether a model.ready
    event was written, and the last event's position (the live stream goes on from there)."""
    points, ready, last_id = [], False, 0
    for row_id, payload in session.execute(
            select(Outbox.id, Outbox.payload).where(Outbox.key == job.id).order_by(Outbox.id)):
        last_id, event = row_id, json.loads(payload)
        if event.get("type") == ModelReady.TYPE:
            ready = True
        if event.get("type") != JobProgress.TYPE:
            continue
        p = JobProgress.model_validate(event["data"])
        if p.stage == "training":
            points.append({"step": p.step, "loss": p.loss, "tokens_per_s": p.tokens_per_s,
                           "total_steps": p.total_steps, "reward_margin": p.reward_margin,
                           "reward_accuracy": p.reward_accuracy})
    return points, ready, last_id


@router.get("/jobs", response_class=HTMLResponse)
def job_list(request: Request, who: SignedIn, session: SessionDep) -> Response:
    rows = session.scalars(select(Job).where(tenant_scope(who, Job.tenant))
                           .order_by(Job.created_at.desc(), Job.id.desc()).limit(200)).all()
    return page(request, "jobs.html", who, jobs=rows, name=board.display_name)


@router.get("/jobs/{job_id}", response_class=HTMLResponse)
def job_page(request: Request, shown: Annotated[Shown, Depends(shown_job)], who: Viewer,
             session: SessionDep, settings: SettingsDep) -> Response:
    job, whole = shown.job, shown.whole
    points, ready, last_id = _events(job, session)
    recipe = job_files.as_named(job.recipe or {}, (settings.data_root / job.tenant).resolve(), job)
    common = dict(job=job, name=board.display_name(job), method=board.method(job),
                  whole=whole, timeline=_timeline(job),
                  terminal=JobState(job.state).terminal, points=points,
                  trained=job_files.training_result(job), model_ready=ready, after=last_id,
                  recipe=recipe,
                  paired={s.id: board.paired_figures(metric_score(s)) for s in job.scores})
    if not whole:  # published: nothing of the tenant's data, files or storage
        return page(request, "job.html", who, **common, report=None, report_unreadable=False,
                    provenance=None, card=None, file_paths=set(), adapter_files=[],
                    recipe_json="")
    report = job_files.parse(PreflightReport, job.preflight)
    files = artifacts.list_artifacts(job).data
    return page(
        request, "job.html", who, **common, report=report,
        report_unreadable=job.preflight is not None and report is None,
        provenance=job_files.provenance(job), card=job_files.model_card(job),
        file_paths={f.path for f in files},
        adapter_files=[f for f in files if f.path.startswith(("adapter/", "merged/"))],
        recipe_json=json.dumps(recipe, indent=2))


@router.get("/jobs/{job_id}/events")
async def job_page_events(request: Request, job: PageJob, after: Annotated[int, Query(ge=0)] = 0,
                          last_event_id: Annotated[int | None, Header(ge=0)] = None,
                          ) -> StreamingResponse:
    """The API's stream; `after` skips what the page was rendered with (a reconnecting
    EventSource sends Last-Event-ID instead)."""
    return await jobs.job_events(job, request, last_event_id or after)


@router.get("/jobs/{job_id}/files/{path:path}")
def job_page_file(job: PageJob, path: str) -> Response:
    return artifacts.get_artifact(job, path)


def not_found_page(request: Request, exc: PageNotFound) -> Response:
    with request.app.state.sessions() as session:
        who = principal_of(session, request.cookies.get(COOKIE))
    return page(request, "error.html", who, 404, title="Not found", detail=exc.detail)
