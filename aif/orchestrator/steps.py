"""The step of each job state: what runs, what it reads back, where the job goes next.

| state        | step                                                                 |
|--------------|----------------------------------------------------------------------|
| validating   | resolve the recipe, run the pre-flight stage -> queued or rejected    |
| queued       | -> training                                                          |
| training     | run the training stage -> evaluating                                 |
| evaluating   | run the evaluation stage, record scores, gate -> handing_off/rejected |
| handing_off  | `handoff.HandOff`: serving check, publish, load, register -> succeeded |

A step raises FinalError or RetryableError (see `errors`); the worker turns them into a
terminal state or a back-off. Every move goes through `advance`, in the transaction that
records what the step learnt.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

from sqlalchemy.orm import Session, sessionmaker

from aif import quotas
from aif.db.models import Job, utcnow
from aif.jobstore.transitions import advance, final_state
from aif.launchers import StageCommand
from aif.orchestrator import batches, handoff, specs
from aif.orchestrator.errors import Deferred, FinalError, LeaseLost, StageRunFailed
from aif.orchestrator.leases import Leases
from aif.orchestrator.outcomes import Outcomes
from aif.orchestrator.references import References
from aif.orchestrator.scores import record_evaluation
from aif.orchestrator.stage_runs import StageRunner, read_result
from aif.orchestrator.throughput import measure, throughput
from aif.settings import Settings
from aif.storage import jobs_root, private_dirs
from events.jobspec import (
    EVALUATION_FAILURE,
    EVALUATION_RESULT,
    EVALUATION_SPEC,
    PREFLIGHT_SPEC,
    PROGRESS_LOG,
    TRAINING_RESULT,
    TRAINING_SPEC,
    EvaluationResult,
    EvaluationSpec,
    StageFailure,
    TrainingResult,
)
from events.messages import FineTuneRequested
from events.preflight_report import PREFLIGHT, PreflightReport
from events.recipe import Recipe
from events.remote_data import localised
from events.states import JobState

log = logging.getLogger(__name__)


class Steps:
    def __init__(self, settings: Settings, sessions: sessionmaker[Session], leases: Leases,
                 runner: StageRunner, outcomes: Outcomes) -> None:
        self.settings, self.sessions, self.leases, self.runner, self.outcomes = (
            settings, sessions, leases, runner, outcomes)
        self.topics = settings.topics
        self.references = References.of(settings)
        self.handoff = handoff.HandOff(settings, sessions, leases, runner)

    def for_state(self, state: JobState) -> Callable[[Job], None]:
        return {
            JobState.validating: self.validate,
            JobState.queued: self.start_training,
            JobState.training: self.train,
            JobState.evaluating: self.evaluate,
            JobState.handing_off: self.hand_off,
        }[state]

    def _move(self, job_id: str, to: JobState, reason: str = "", **fields: object) -> None:
        with self.sessions() as session:
            job = self.leases.owned(session, job_id)
            for name, value in fields.items():
                setattr(job, name, value)
            advance(session, job, to, self.topics, reason)
            session.commit()

    def work_dir(self, job: Job) -> Path:
        """The job's folder under its tenant's jobs root, created owner-only."""
        if job.work_dir:
            path = Path(job.work_dir)
            path.mkdir(mode=0o700, parents=True, exist_ok=True)
        else:
            path = jobs_root(self.settings.jobs_dir, job.tenant) / job.id
            private_dirs(self.settings.jobs_dir, path)
        return path

    def validate(self, job: Job) -> None:
        """Freeze the effective recipe and let the pre-flight stage read the data; reject
        what can never run before any training is launched."""
        request = FineTuneRequested.model_validate(job.request["data"])
        with self.sessions() as session:
            uploaded = specs.uploaded_file(session, job.tenant, request.file_id)
            recipe = specs.effective_recipe(request, self.references, job.tenant,
                                            uploaded).with_pii_at_least(self.settings.pii_policy)
            hint = throughput(self.settings, recipe, session, job.tenant)
        work = self.work_dir(job)
        with self.sessions() as session:  # where the stage's log is, even if it refuses
            self.leases.owned(session, job.id).work_dir = str(work)
            session.commit()
        spec_path = work / PREFLIGHT_SPEC
        specs.preflight_spec(job, recipe, work, self.settings, hint).write(spec_path)
        self.runner.run(job, JobState.validating,
                        StageCommand("finetune.preflight", spec_path, distributed=False),
                        work / "preflight.log", work / "preflight_progress.jsonl",
                        time_limit_s=self.settings.preflight_timeout_s)
        report = read_result(PreflightReport, work / PREFLIGHT)
        recipe = recipe.model_copy(update={"data": localised(recipe.data, work)})  # URLs
        if report.pii is not None:  # training reads the redacted copies, if any
            recipe = recipe.model_copy(update={"data": report.pii.applied_to(recipe.data)})
        if report.held_out is not None:  # data.eval_split: training reads the rest only
            recipe = report.held_out.applied_to(recipe)
        if report.picked is not None:  # auto values and epochs: the numbers picked
            recipe = report.picked.applied_to(recipe)
        frozen = {"recipe": recipe.model_dump(mode="json"),
                  "preflight": report.model_dump(mode="json"), "run_ref": None}
        if report.usable:
            self._admit(job.id, report, frozen)
        else:
            self._move(job.id, JobState.rejected, f"{report.summary()}\n{report.reason}",
                       **frozen)

    def _admit(self, job_id: str, report: PreflightReport, frozen: dict[str, object]) -> None:
        """Queue the job unless it is over a quota of its tenant: counted and moved in one
        transaction under the tenant's quota lock, so two jobs cannot take one free slot."""
        with self.sessions() as session:
            job = self.leases.owned(session, job_id)
            refused = quotas.refusal(session, job, report.estimate, self.settings.quota_defaults)
            for name, value in frozen.items():
                setattr(job, name, value)
            if refused is not None:
                advance(session, job, JobState.rejected, self.topics,
                        f"{report.summary()}\n{refused}")
            else:
                job.estimate = (report.estimate.model_dump(mode="json") if report.estimate
                                else None)
                advance(session, job, JobState.queued, self.topics, report.summary())
            session.commit()

    def start_training(self, job: Job) -> None:
        self._move(job.id, JobState.training, "training started")

    def train(self, job: Job) -> None:
        recipe = Recipe.model_validate(job.recipe)
        work = self.work_dir(job)
        spec_path = work / TRAINING_SPEC
        specs.training_spec(job, recipe, work, self.settings).write(spec_path)
        self.runner.run(job, JobState.training,
                        StageCommand("finetune.train", spec_path, recipe.train.num_processes),
                        work / "training.log", work / PROGRESS_LOG)
        result = read_result(TrainingResult, work / TRAINING_RESULT)
        measured = measure(result, recipe, job.estimate, self.settings.launcher)
        reason = f"trained {result.steps} steps, final loss {result.final_loss:.4f}"
        if result.best_step is not None:
            reason += (f"; {'stopped early, ' * result.stopped_early}kept the adapter of step "
                       f"{result.best_step} (validation loss {result.validation_loss:.4f})")
        self._move(job.id, JobState.evaluating, reason,
                   adapter_uri=Path(result.adapter_dir).as_uri(),
                   measured=measured.model_dump(mode="json"))

    def evaluate(self, job: Job) -> None:
        """Score base and tuned model, record the scores and gate; jobs waiting to be
        evaluated with the same base and settings are scored in the same run (`batches`)."""
        work = self.work_dir(job)
        try:
            lead = batches.member(job, work)
        except (OSError, ValueError) as exc:
            raise StageRunFailed(f"{TRAINING_RESULT} unreadable: {type(exc).__name__}") from exc
        lead.out.mkdir(exist_ok=True)
        spec = specs.evaluation_spec(job, lead.recipe, lead.trained, lead.out, self.settings)
        spec.write(work / EVALUATION_SPEC)  # its evaluation alone, also when it leads a batch
        self._wait_for_companions(job, lead)
        companions = batches.gather(self.settings, self.leases, job, lead)
        if companions:
            self._evaluate_together(job, lead, spec, companions)
            return
        self.runner.run(job, JobState.evaluating, _evaluation(lead, work / EVALUATION_SPEC),
                        work / "evaluation.log", lead.out / PROGRESS_LOG)
        self._record_evaluation(lead)

    def _wait_for_companions(self, job: Job, lead: batches.Member) -> None:
        """Let the job go for a while if another of its tenant's jobs, still training, could
        take it along into its evaluation run (`batches.should_wait`)."""
        with self.sessions() as session:
            row = self.leases.owned(session, job.id)
            if not batches.should_wait(self.settings, session, row, lead):
                return
            wait_s = self.settings.eval_batch_wait_s
            row.next_attempt_at = utcnow() + timedelta(seconds=wait_s)
            row.reason = (f"trained; waiting up to {wait_s:g} s to be evaluated together with "
                          "another job of this tenant still training on the same base model")
            session.commit()
        raise Deferred(row.reason)

    def _evaluate_together(self, job: Job, lead: batches.Member, spec: EvaluationSpec,
                           companions: list[batches.Member]) -> None:
        """One run for the leader and its companions. Each companion is settled on its own:
        its result recorded, or the run's failure applied to it as to the leader; if the
        leader is cancelled (or its worker stops) the run is stopped and the companions are
        let go with no run, to be evaluated again."""
        shared = spec.model_copy(update={
            "more_adapter_dirs": [c.trained.adapter_dir for c in companions],
            "more_output_dirs": [str(c.out) for c in companions]})
        spec_path = lead.work / batches.EVALUATION_BATCH_SPEC
        log.info("evaluating %d jobs with one base load: %s", 1 + len(companions),
                 ", ".join([job.id, *(c.job_id for c in companions)]))
        live = {c.job_id: c.out / PROGRESS_LOG for c in companions}
        by_id = {c.job_id: c for c in companions}
        try:
            for c in companions:
                c.out.mkdir(mode=0o700, exist_ok=True)
            EvaluationSpec.model_validate(shared.model_dump()).write(spec_path)
            self.runner.run(job, JobState.evaluating, _evaluation(lead, spec_path),
                            lead.work / "evaluation.log", lead.out / PROGRESS_LOG,
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
                member: batches.Member | None = None) -> None:
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

    def _record_evaluation(self, member: batches.Member) -> None:
        """Record the job's own result (or its own adapter's failure) and gate it."""
        failure = StageFailure.find_at(member.out / EVALUATION_FAILURE)
        if failure is not None:
            raise FinalError(failure.reason)
        result = read_result(EvaluationResult, member.out / EVALUATION_RESULT)
        with self.sessions() as session:
            row = self.leases.owned(session, member.job_id)
            decision = record_evaluation(session, row, member.recipe, result, self.topics)
            to = JobState.handing_off if decision.passed else JobState.rejected
            advance(session, row, to, self.topics, decision.reason)
            session.commit()

    def hand_off(self, job: Job) -> None:
        self.handoff.run(job, self.work_dir(job))


def _evaluation(lead: batches.Member, spec_path: Path) -> StageCommand:
    processes = lead.recipe.eval.num_processes
    return StageCommand(batches.EVALUATION_MODULE, spec_path, processes,
                        distributed=processes > 1)

