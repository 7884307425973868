"""FastAPI app: the leaderboard page, its JSON twin, and job lookups."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.templating import Jinja2Templates
from pydantic import BaseModel
from sqlalchemy.orm import Session, sessionmaker

from aif.db.models import Job
from aif.web.leaderboard import LeaderboardRow, leaderboard_rows

TEMPLATES = Jinja2Templates(directory=Path(__file__).parent / "templates")


class TransitionPublic(BaseModel):
    from_state: str | None
    to_state: str
    reason: str


class JobPublic(BaseModel):
    id: str
    tenant: str
    recipe: str | None
    state: str
    reason: str
    adapter_uri: str | None
    gate_passed: bool | None
    gate_reason: str | None
    transitions: list[TransitionPublic]


def get_session(request: Request) -> Iterator[Session]:
    with request.app.state.sessions() as session:
        yield session


SessionDep = Annotated[Session, Depends(get_session)]


def create_app(sessions: sessionmaker[Session]) -> FastAPI:
    app = FastAPI(title="aif-tuning", version="0.1.0")
    app.state.sessions = sessions

    @app.get("/", include_in_schema=False)
    def index() -> RedirectResponse:
        return RedirectResponse("/leaderboard")

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/leaderboard", response_class=HTMLResponse)
    def leaderboard_page(request: Request, session: SessionDep) -> HTMLResponse:
        return TEMPLATES.TemplateResponse(
            request, "leaderboard.html", {"rows": leaderboard_rows(session)}
        )

    @app.get("/api/leaderboard")
    def leaderboard(session: SessionDep) -> list[LeaderboardRow]:
        return leaderboard_rows(session)

    @app.get("/api/jobs/{job_id}")
    def job(job_id: str, session: SessionDep) -> JobPublic:
        row = session.get(Job, job_id)
        if row is None:
            raise HTTPException(404, f"no job {job_id}")
        return JobPublic(
            id=row.id, tenant=row.tenant, recipe=row.recipe_name, state=row.state,
            reason=row.reason, adapter_uri=row.adapter_uri, gate_passed=row.gate_passed,
            gate_reason=row.gate_reason,
            transitions=[TransitionPublic(from_state=t.from_state, to_state=t.to_state,
                                          reason=t.reason) for t in row.transitions],
        )

    @app.get("/api/jobs/{job_id}/preflight")
    def job_preflight(job_id: str, session: SessionDep) -> dict:
        """The job's pre-flight report (finetune.preflight.PreflightReport as JSON)."""
        row = session.get(Job, job_id)
        if row is None:
            raise HTTPException(404, f"no job {job_id}")
        if row.preflight is None:
            raise HTTPException(404, f"job {job_id} has no pre-flight report yet")
        return row.preflight

    return app
