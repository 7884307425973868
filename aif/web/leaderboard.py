"""Leaderboard rows: one per scored job, task and metric, base vs tuned.

Which jobs a reader sees is a SQL condition given by the caller (`visible_to`), so the page,
a tenant and staff share one query and no caller can forget the scope. A row holds only
scores and the gate's decision, which is arithmetic on them: never the job's data, reasons,
pre-flight report or samples, so a public row shows nothing its tenant did not publish.
"""

from __future__ import annotations

from pydantic import BaseModel
from sqlalchemy import ColumnElement, or_, select
from sqlalchemy.orm import Session

from aif.db.models import Job, Score
from aif.orchestrator.scores import metric_score
from aif.tenants import Principal
from aif.web.deps import UtcDateTime, tenant_scope
from events.messages import PairedComparison


class LeaderboardRowPublic(BaseModel):
    job_id: str
    tenant: str
    public: bool
    recipe: str | None
    base_model: str
    state: str
    task: str
    metric: str
    base: float
    tuned: float
    delta: float
    base_stderr: float | None
    tuned_stderr: float | None
    samples: int
    majority: float | None = None
    chance: float | None = None
    base_macro_f1: float | None = None
    tuned_macro_f1: float | None = None
    base_recall: dict[str, float] | None = None
    tuned_recall: dict[str, float] | None = None
    vs_base: PairedComparison | None = None
    vs_majority: PairedComparison | None = None
    gate_passed: bool | None
    gate_reason: str | None
    finished_at: UtcDateTime


class LeaderboardPublic(BaseModel):
    data: list[LeaderboardRowPublic]


class LeaderboardFilter(BaseModel):
    recipe: str | None = None
    task: str | None = None
    base_model: str | None = None
    gate_passed: bool | None = None


PUBLIC_ONLY: ColumnElement[bool] = Job.public.is_(True)


def visible_to(principal: Principal) -> ColumnElement[bool]:
    """Staff see every job; a tenant its own and the public ones."""
    return or_(tenant_scope(principal, Job.tenant), PUBLIC_ONLY)


def _base_model(job: Job) -> str:
    return (job.recipe or {}).get("model", {}).get("base", "")


def _row(job: Job, stored: Score) -> LeaderboardRowPublic:
    score = metric_score(stored)
    return LeaderboardRowPublic(
        **score.model_dump(), delta=score.delta, samples=stored.samples, job_id=job.id,
        tenant=job.tenant, public=job.public, recipe=job.recipe_name,
        base_model=_base_model(job), state=job.state, gate_passed=job.gate_passed,
        gate_reason=job.gate_reason, finished_at=job.updated_at)


def leaderboard_rows(session: Session, visible: ColumnElement[bool],
                     filters: LeaderboardFilter | None = None) -> list[LeaderboardRowPublic]:
    f = filters or LeaderboardFilter()
    query = select(Job, Score).join(Score, Score.job_id == Job.id).where(visible)
    if f.recipe is not None:
        query = query.where(Job.recipe_name == f.recipe)
    if f.task is not None:
        query = query.where(Score.task == f.task)
    if f.gate_passed is not None:
        query = query.where(Job.gate_passed == f.gate_passed)
    rows = [
        _row(job, s)
        for job, s in session.execute(query).all()
        # The base model sits inside the frozen recipe's JSON: filtered here, portably.
        if f.base_model is None or _base_model(job) == f.base_model
    ]
    return sorted(rows, key=lambda r: (r.task, r.metric, -r.tuned))
