"""Jobs that reach evaluation together, scored in one evaluation run with one base load.

A worker starting the evaluation of a job (the leader) takes along other jobs waiting in
`evaluating` that the same run can score exactly as it would score each alone: same tenant
(tenants never share a process), same base model, same effective `recipe.eval` and the same
base-score cache, no evaluation run of their own started yet. Their leases are taken as
`Leases.claim` takes one (`Leases.claim_companions`), up to `Settings.eval_batch_max` jobs in
all. Each job's adapter is scored into its own folder (`EvaluationSpec.more_output_dirs`),
so each job reads, records and gates its own result, in its own transaction.

Jobs that finish training together reach this point in their own workers, each holding
its own lease; so a job that finds another of its tenant still training on the same base
lets its lease go and waits (`should_wait`, at most `Settings.eval_batch_wait_s`, once),
and the other, finishing, takes it along (a job waiting so may be claimed as a companion
before its `next_attempt_at`; `Leases.claim_companions`).

Each companion's `run_ref` names the shared run (and its `leader`), so a worker re-adopting
it after a crash attaches to that run and reads its own folder, like the leader's would; a
run that vanished is started again for that job alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from aif.db.models import Job
from aif.orchestrator.leases import Leases
from aif.orchestrator.specs import base_score_cache
from aif.settings import Settings
from events.jobspec import TRAINING_RESULT, TrainingResult
from events.recipe import Recipe
from events.states import JobState

EVALUATION_MODULE = "evaluation.run"
EVALUATION_BATCH_SPEC = "evaluation_batch_spec.json"
"""In the leader's folder: the shared run's spec (its own `evaluation_spec.json` stays the
spec of its evaluation alone, which a re-adopting worker starts if the shared run vanished)."""


@dataclass(frozen=True)
class Member:
    """A job as an evaluation run sees it."""

    job_id: str
    tenant: str
    recipe: Recipe
    work: Path
    trained: TrainingResult

    @property
    def out(self) -> Path:
        return self.work / "evaluation"

    def shares_run_with(self, other: Member, settings: Settings) -> bool:
        """Scored by one run exactly as each alone: the stage sees nothing else of a job."""
        return (self.tenant == other.tenant
                and self.trained.base_model_dir == other.trained.base_model_dir
                and self.recipe.eval == other.recipe.eval
                and base_score_cache(settings, self.tenant, self.recipe)
                == base_score_cache(settings, other.tenant, other.recipe))


def started(job: Job) -> bool:
    """An evaluation run was started for the job (alone or shared); it is attached to."""
    return bool(job.run_ref) and job.run_ref.get("module") == EVALUATION_MODULE


def member(job: Job, work: Path) -> Member:
    """The job with its frozen recipe and training result; OSError/ValueError if unreadable."""
    return Member(job.id, job.tenant, Recipe.model_validate(job.recipe), work,
                  TrainingResult.read(work / TRAINING_RESULT))


def should_wait(settings: Settings, session: Session, job: Job, lead: Member) -> bool:
    """Whether the job, just trained, waits for another job of its tenant still training on
    the same base with the same eval settings, to be taken along into that job's run.

    A job waits once only (a job let go to wait has `next_attempt_at` set; one backing off
    has attempts), so no job waits longer than `eval_batch_wait_s` for a batch."""
    if (settings.eval_batch_max <= 1 or settings.eval_batch_wait_s <= 0 or started(job)
            or job.attempts or job.next_attempt_at is not None):
        return False
    training = session.scalars(select(Job).where(
        Job.tenant == job.tenant, Job.state == JobState.training.value, Job.id != job.id))
    for other in training:
        try:
            recipe = Recipe.model_validate(other.recipe)
        except ValueError:
            continue
        if recipe.model.base == lead.recipe.model.base and recipe.eval == lead.recipe.eval:
            return True
    return False


def gather(settings: Settings, leases: Leases, leader: Job, lead: Member) -> list[Member]:
    """Take the jobs that can share the leader's run (their leases are ours afterwards)."""
    if settings.eval_batch_max <= 1 or started(leader):
        return []
    found: dict[str, Member] = {}

    def fits(job: Job) -> bool:
        if started(job) or job.work_dir is None or not job.recipe:
            return False
        try:
            candidate = member(job, Path(job.work_dir))
        except (OSError, ValueError):
            return False
        found[job.id] = candidate
        return candidate.shares_run_with(lead, settings)

    taken = leases.claim_companions(leader, fits, settings.eval_batch_max - 1)
    return [found[job_id] for job_id in taken]
