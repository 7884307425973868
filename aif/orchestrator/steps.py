"""The step of each job state: what runs, what it reads back, where the job goes next.

| state        | step                                                                 |
|--------------|----------------------------------------------------------------------|
| validating   | resolve the recipe, run the pre-flight stage -> queued or rejected    |
| queued       | -> training                                                          |
| training     | run the training stage -> evaluating                                 |
| evaluating   | `batches.Evaluations`: evaluation stage, scores, gate -> handing_off/rejected |
| handing_off  | `handoff.HandOff`: serving check, publish, load, register -> succeeded |

A step raises FinalError or RetryableError (see `errors`); the worker turns them into a
terminal state or a back-off. Every move goes through `advance`, in the transaction that
records what the step learnt.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from sqlalchemy.orm import Session, sessionmaker

from aif import quotas
from aif.db.models import Job
from aif.jobstore.transitions import advance
from aif.orchestrator import batches, handoff, specs
from aif.orchestrator.leases import Leases
from aif.orchestrator.outcomes import Outcomes
from aif.orchestrator.references import References
from aif.orchestrator.stage_runs import StageRunner, read_result
from aif.orchestrator.throughput import measure, throughput
from aif.settings import Settings
from aif.stages import PREFLIGHT, TRAINING
from aif.storage import jobs_root, private_dirs
from events.messages import FineTuneRequested
from events.recipe import Recipe
from events.states import JobState
from stagefiles.preflight_report import PreflightReport
from stagefiles.remote_data import localised

log = logging.getLogger(__name__)


class Steps:
    def __init__(self, settings: Settings, sessions: sessionmaker[Session], leases: Leases,
                 runner: StageRunner, outcomes: Outcomes) -> None:
        self.settings, self.sessions, self.leases, self.runner = (
            settings, sessions, leases, runner)
        self.topics = settings.topics
        self.references = References.of(settings)
        self.evaluations = batches.Evaluations(settings, sessions, leases, runner, outcomes)
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
            recipe, _ = specs.starting_adapter(session, self.settings, job.tenant, recipe)
            hint = throughput(self.settings, recipe, session, job.tenant)
        work = self.work_dir(job)
        with self.sessions() as session:  # where the stage's log is, even if it refuses
            self.leases.owned(session, job.id).work_dir = str(work)
            session.commit()
        spec_path = work / PREFLIGHT.spec_file
        specs.preflight_spec(job.id, job.tenant, recipe, work, self.settings, hint).write(spec_path)
        self.runner.run_stage(job, JobState.validating, PREFLIGHT, spec_path,
                              time_limit_s=self.settings.preflight_timeout_s)
        report = read_result(PREFLIGHT, work)
        recipe = recipe.model_copy(update={"data": localised(recipe.data, work)})  # URLs
        if report.pii is not None:  # training reads the redacted copies, if any
            recipe = recipe.model_copy(update={"data": report.pii.applied_to(recipe.data)})
        if report.held_out is not None:  # data.eval_split: training reads the rest only
            recipe = report.held_out.applied_to(recipe)
        if report.eval_pairs is not None:  # the gate reads them in its own columns
            recipe = report.eval_pairs.applied_to(recipe)
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
        with self.sessions() as session:  # the pinned version, still there and usable
            _, init_adapter_dir = specs.starting_adapter(session, self.settings, job.tenant,
                                                         recipe)
        spec_path = work / TRAINING.spec_file
        specs.training_spec(job, recipe, work, self.settings, init_adapter_dir).write(spec_path)
        self.runner.run_stage(job, JobState.training, TRAINING, spec_path,
                              recipe.train.num_processes)
        result = read_result(TRAINING, work)
        measured = measure(result, recipe, job.estimate, self.settings.launcher)
        self._move(job.id, JobState.evaluating, result.summary(),
                   adapter_uri=Path(result.adapter_dir).as_uri(),
                   measured=measured.model_dump(mode="json"))

    def evaluate(self, job: Job) -> None:
        """Score base and tuned model, record the scores and gate; jobs waiting to be
        evaluated with the same base and settings are scored in the same run (`batches`)."""
        lead, spec, companions = self.evaluations.prepare(job, self.work_dir(job))
        if companions:
            log.info("evaluating %d jobs with one base load: %s", 1 + len(companions),
                     ", ".join([job.id, *(c.job_id for c in companions)]))
        self.evaluations.run(job, lead, spec, companions)

    def hand_off(self, job: Job) -> None:
        self.handoff.run(job, self.work_dir(job))

