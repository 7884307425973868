"""Compute before and after training: the throughput the pre-flight estimate assumes, and
what a job's training measured, kept with the job beside its estimate.

A measured figure teaches the next estimate: the tenant's last job on the same base model and
launcher gives tokens/s per device instead of the site's rough figure. Only the tenant's own
jobs are read.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select
from sqlalchemy.orm import Session

from aif.db.models import Job
from aif.launchers import get_launcher
from aif.settings import Settings
from events.recipe import Recipe
from stagefiles.compute import training_flops
from stagefiles.jobspec import Throughput, TrainingResult

RECENT_JOBS = 50
"""How many of the tenant's newest measured jobs are searched for a matching one."""


class Measured(BaseModel):
    """What the training stage reported, in the estimate's terms."""

    model_config = ConfigDict(extra="forbid")

    tokens: int = Field(description="Real (non-padding) tokens trained on, prompts included.")
    steps: int
    wall_s: float = Field(description="The training stage from start to result.")
    processes: int
    device_hours: float = Field(description="wall_s x processes / 3600.")
    flops: float | None = Field(description="6 x parameters x tokens; None without an estimate "
                                "that gives the parameters.")
    tokens_per_s: float | None = Field(description="Of the training loop, all processes.")
    launcher: str
    base_model: str


def measure(result: TrainingResult, recipe: Recipe, estimate: dict | None,
            launcher: str) -> Measured:
    parameters = estimate["parameters"] if estimate else None
    return Measured(
        tokens=result.train_tokens, steps=result.steps, wall_s=result.wall_s,
        processes=result.processes, device_hours=result.wall_s * result.processes / 3600,
        flops=None if parameters is None else training_flops(parameters, result.train_tokens),
        tokens_per_s=result.tokens_per_s, launcher=launcher, base_model=recipe.model.base)


def training_devices(settings: Settings, recipe: Recipe) -> int:
    """Processes the configured launcher starts for the recipe's training."""
    return get_launcher(settings.launcher, settings).processes(recipe.train.num_processes)


def throughput(settings: Settings, recipe: Recipe, session: Session | None = None,
               tenant: str | None = None) -> Throughput:
    """What the pre-flight estimate assumes; with a session and tenant, the tenant's last
    measured figure for this base model and launcher, if any."""
    rates = settings.estimate_tokens_per_s.model_dump()
    hint = Throughput(launcher=settings.launcher, devices=training_devices(settings, recipe),
                      tokens_per_s=rates)
    if session is None or tenant is None:
        return hint
    rows = session.execute(select(Job.id, Job.measured).where(
        Job.tenant == tenant, Job.measured.is_not(None))
        .order_by(Job.updated_at.desc()).limit(RECENT_JOBS))
    for job_id, raw in rows:
        if not raw:  # a JSON null
            continue
        m = Measured.model_validate(raw)
        if (m.base_model, m.launcher) == (recipe.model.base, settings.launcher) and (
                m.tokens_per_s):
            return hint.model_copy(update={"measured_tokens_per_s": m.tokens_per_s / m.processes,
                                           "measured_job": job_id})
    return hint
