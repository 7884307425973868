"""Jobs that reach evaluation together, scored in one evaluation run with one base load.

A worker starting the evaluation of a job (the leader) takes along other jobs waiting in
`evaluating` that the same run can score exactly as it would score each alone: same tenant
(tenants never share a process), same base model, same effective `recipe.eval` and the same
base-score cache, no evaluation run of their own started yet. Their leases are taken as
`Leases.claim` takes one (`Leases.claim_companions`), up to `Settings.eval_batch_max` jobs in
all. Each job's adapter is scored into its own folder (`EvaluationSpec.more_output_dirs`),
so each job reads, records and gates its own result, in its own transaction.

Each companion's `run_ref` names the shared run (and its `leader`), so a worker re-adopting
it after a crash attaches to that run and reads its own folder, like the leader's would; a
run that vanished is started again for that job alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from aif.db.models import Job
from aif.orchestrator.leases import Leases
from aif.orchestrator.specs import base_score_cache
from aif.settings import Settings
from events.jobspec import TRAINING_RESULT, TrainingResult
from events.recipe import Recipe

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
