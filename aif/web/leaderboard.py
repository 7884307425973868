"""Leaderboard rows: one per scored job, task and metric, base vs tuned."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel
from sqlalchemy import select
from sqlalchemy.orm import Session

from aif.db.models import Job, Score


class LeaderboardRow(BaseModel):
    job_id: str
    tenant: str
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
    gate_passed: bool | None
    gate_reason: str | None
    finished_at: datetime


def leaderboard_rows(session: Session) -> list[LeaderboardRow]:
    pairs = session.execute(select(Job, Score).join(Score, Score.job_id == Job.id)).all()
    rows = [
        LeaderboardRow(
            job_id=job.id, tenant=job.tenant, recipe=job.recipe_name,
            base_model=(job.recipe or {}).get("model", {}).get("base", ""),
            state=job.state, task=s.task, metric=s.metric, base=s.base, tuned=s.tuned,
            delta=s.tuned - s.base, base_stderr=s.base_stderr, tuned_stderr=s.tuned_stderr,
            samples=s.samples, gate_passed=job.gate_passed, gate_reason=job.gate_reason,
            finished_at=job.updated_at,
        )
        for job, s in pairs
    ]
    return sorted(rows, key=lambda r: (r.task, r.metric, -r.tuned))
