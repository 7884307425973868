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

`Evaluations` is the step of a job in `evaluating` on `Steps`' behalf: it prepares the
leader's run (waiting, or gathering companions), runs it, and settles each job it scored.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from aif.db.models import Job, utcnow
from aif.jobstore.transitions import advance, final_state
from aif.orchestrator import specs
from aif.orchestrator.errors import Deferred, FinalError, LeaseLost, StageRunFailed
from aif.orchestrator.leases import Leases
from aif.orchestrator.outcomes import Outcomes
from aif.orchestrator.scores import record_evaluation
from aif.orchestrator.stage_runs import StageRunner, read_result
from aif.settings import Settings
from aif.stages import EVALUATION, TRAINING
from events.recipe import Recipe
from events.states import JobState
from stagefiles.jobspec import (
    EVALUATION_FAILURE,
    PROGRESS_LOG,
    EvaluationSpec,
    StageFailure,
    TrainingResult,
)

log = logging.getLogger(__name__)

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
                and specs.base_score_cache(settings, self.tenant, self.recipe)
                == specs.base_score_cache(settings, other.tenant, other.recipe))


def started(job: Job) -> bool:
    """An evaluation run was started for the job (alone or shared); it is attached to."""
    return bool(job.run_ref) and job.run_ref.get("module") == EVALUATION.module


def member(job: Job, work: Path) -> Member:
    """The job with its frozen recipe and training result; OSError/ValueError if unreadable."""
    return Member(job.id, job.tenant, Recipe.model_validate(job.recipe), work,
                  TRAINING.result.read(work / TRAINING.result_file))


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


class Evaluations:
    """The step of a job in `evaluating` (see the module), on `Steps`' behalf."""

    def __init__(self, settings: Settings, sessions: sessionmaker[Session], leases: Leases,
                 runner: StageRunner, outcomes: Outcomes) -> None:
        self.settings, self.sessions, self.leases, self.runner, self.outcomes = (
            settings, sessions, leases, runner, outcomes)

    def prepare(self, job: Job, work: Path) -> tuple[Member, EvaluationSpec, list[Member]]:
        """The job as its run's leader, its own spec (written, also when it leads a batch)
        and the companions taken along; Deferred if it waits for one still training."""
        try:
            lead = member(job, work)
        except (OSError, ValueError) as exc:
            raise StageRunFailed(
                f"{TRAINING.result_file} unreadable: {type(exc).__name__}") from exc
        lead.out.mkdir(exist_ok=True)
        spec = specs.evaluation_spec(job, lead.recipe, lead.trained, lead.out, self.settings)
        spec.write(work / EVALUATION.spec_file)
        self._wait_for_companions(job, lead)
        return lead, spec, gather(self.settings, self.leases, job, lead)

    def run(self, job: Job, lead: Member, spec: EvaluationSpec,
            companions: list[Member]) -> None:
        """Score base and tuned model(s), record each job's scores and gate it."""
        if companions:
            self._evaluate_together(job, lead, spec, companions)
            return
        self.runner.run_stage(job, JobState.evaluating, EVALUATION,
                              lead.work / EVALUATION.spec_file,
                              lead.recipe.eval.num_processes, progress_dir=lead.out)
        self._record_evaluation(lead)

    def _wait_for_companions(self, job: Job, lead: Member) -> None:
        """Let the job go for a while if another of its tenant's jobs, still training, could
        take it along into its evaluation run (`should_wait`)."""
        with self.sessions() as session:
            row = self.leases.owned(session, job.id)
            if not should_wait(self.settings, session, row, lead):
                return
            wait_s = self.settings.eval_batch_wait_s
            row.next_attempt_at = utcnow() + timedelta(seconds=wait_s)
            row.reason = (f"trained; waiting up to {wait_s:g} s to be evaluated together with "
                          "another job of this tenant still training on the same base model")
            session.commit()
        raise Deferred(row.reason)

    def _evaluate_together(self, job: Job, lead: Member, spec: EvaluationSpec,
                           companions: list[Member]) -> None:
        """One run for the leader and its companions. Each companion is settled on its own:
        its result recorded, or the run's failure applied to it as to the leader; if the
        leader is cancelled (or its worker stops) the run is stopped and the companions are
        let go with no run, to be evaluated again."""
        shared = spec.model_copy(update={
            "more_adapter_dirs": [c.trained.adapter_dir for c in companions],
            "more_output_dirs": [str(c.out) for c in companions]})
        spec_path = lead.work / EVALUATION_BATCH_SPEC
        live = {c.job_id: c.out / PROGRESS_LOG for c in companions}
        by_id = {c.job_id: c for c in companions}
        try:
            for c in companions:
                c.out.mkdir(mode=0o700, exist_ok=True)
            EvaluationSpec.model_validate(shared.model_dump()).write(spec_path)
            self.runner.run_stage(job, JobState.evaluating, EVALUATION, spec_path,
                                  lead.recipe.eval.num_processes, progress_dir=lead.out,
                                  companions=live)
        except LeaseLost:
            self._let_go(list(by_id), again=True)
            raise
        except Exception as exc:
            for job_id in live:
                self._settle(job_id, exc)
            self._let_go(list(by_id))
            raise
        for job_id in live:
            self._settle(job_id, None, by_id[job_id])
        self._let_go(list(by_id))
        self._record_evaluation(lead)

    def _settle(self, job_id: str, failure: Exception | None,
                member: Member | None = None) -> None:
        """A companion's outcome, as the worker would settle it if it drove the job."""
        try:
            try:
                if failure is not None:
                    raise failure
                assert member is not None
                self._record_evaluation(member)
            except FinalError as exc:
                self.outcomes.end(job_id, final_state(JobState.evaluating), str(exc))
            except LeaseLost:
                raise
            except Exception as exc:
                self.outcomes.retry_later(job_id, JobState.evaluating, exc)
        except LeaseLost:
            log.info("job %s left its shared run before its outcome was recorded", job_id)

    def _let_go(self, job_ids: list[str], again: bool = False) -> None:
        """Release the companions still ours (`again`: with no run, so that the next worker
        starts one); an ended one's scratch is removed first, as the worker does."""
        for job_id in job_ids:
            with self.sessions() as session:
                row = session.get_one(Job, job_id, with_for_update=True)
                if row.lease_owner != self.leases.owner:
                    continue
                if again and not JobState(row.state).terminal:
                    row.run_ref = None
                session.commit()
            self.outcomes.remove_scratch(job_id)
            self.leases.release(job_id)

    def _record_evaluation(self, member: Member) -> None:
        """Record the job's own result (or its own adapter's failure) and gate it."""
        failure = StageFailure.find_at(member.out / EVALUATION_FAILURE)
        if failure is not None:
            raise FinalError(failure.reason)
        result = read_result(EVALUATION, member.out)
        with self.sessions() as session:
            row = self.leases.owned(session, member.job_id)
            decision = record_evaluation(session, row, member.recipe, result,
                                         self.settings.topics)
            to = JobState.handing_off if decision.passed else JobState.rejected
            advance(session, row, to, self.settings.topics, decision.reason)
            session.commit()
