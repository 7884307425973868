"""Job workers: claim a job with a lease, drive it through its states, heartbeat meanwhile.

The worker never trains or evaluates itself: it starts the stage as a separate process through
a launcher and watches it. Each step is chosen from the job's stored state, so a job whose
worker died is re-adopted by any orchestrator once the lease has expired and continues from
the last committed state.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

from kafka import KafkaProducer
from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session, sessionmaker

from aif.db.models import Job, Score, utcnow
from aif.launchers import LOST, Launcher, RunHandle, StageCommand, get_launcher
from aif.orchestrator.handoff import notify_inference
from aif.orchestrator.states import SOURCE, enqueue_event, transition
from aif.settings import Settings
from evaluation.gate import decide
from evaluation.tasks import TaskConfigError
from events.bus import envelope, publish
from events.jobspec import (
    EVALUATION_RESULT,
    EVALUATION_SPEC,
    PROGRESS_LOG,
    TRAINING_RESULT,
    TRAINING_SPEC,
    EvaluationResult,
    EvaluationSpec,
    ProgressLine,
    TrainingResult,
    TrainingSpec,
)
from events.messages import (
    EvaluationCompleted,
    FineTuneRequested,
    JobProgress,
    MetricScore,
    ModelReady,
)
from events.recipe import EvalTask, Recipe, RecipeError
from events.states import TERMINAL_STATES, JobState
from finetune.base_model import BaseModelError, load_tokenizer
from finetune.data import DataValidationError
from finetune.preflight import PREFLIGHT, build_report
from recipes import load_recipe

log = logging.getLogger(__name__)

ACTIVE_STATES = [s.value for s in JobState if s not in TERMINAL_STATES]


class StageFailed(RuntimeError):
    """A stage process ended badly; the message is the job's failure reason."""


def _with_extra_tasks(recipe: Recipe, names: list[str]) -> Recipe:
    """The request's additional (built-in) evaluation tasks, each scored once."""
    known = {t.name for t in recipe.eval.tasks}
    extra = [EvalTask(name=n) for n in dict.fromkeys(names) if n not in known]
    if not extra:
        return recipe
    return recipe.model_copy(update={"eval": recipe.eval.model_copy(
        update={"tasks": [*recipe.eval.tasks, *extra]})})


class LeaseLost(RuntimeError):
    """Another worker owns the job now, or it was cancelled: stop touching it."""


class JobWorker:
    def __init__(
        self,
        settings: Settings,
        sessions: sessionmaker[Session],
        producer: KafkaProducer,
        launcher: Launcher,
    ) -> None:
        self.settings, self.sessions, self.producer, self.launcher = (
            settings, sessions, producer, launcher)
        self.topics = settings.topics
        self.owner = f"worker-{uuid.uuid4().hex[:12]}"
        self.stopping = threading.Event()
        self._progress_paused_until = 0.0

    # -- leasing -------------------------------------------------------------------------
    def _lease_free(self, now):
        return or_(Job.lease_expires_at.is_(None), Job.lease_expires_at < now)

    def claim(self) -> str | None:
        """Atomically take the oldest active job nobody holds (compare-and-set on the lease)."""
        with self.sessions() as session:
            now = utcnow()
            candidates = session.scalars(
                select(Job.id)
                .where(Job.state.in_(ACTIVE_STATES), self._lease_free(now))
                .order_by(Job.created_at)
                .limit(10)
            ).all()
            for job_id in candidates:
                taken = session.execute(
                    update(Job)
                    .where(Job.id == job_id, self._lease_free(now))
                    .values(lease_owner=self.owner,
                            lease_expires_at=now + timedelta(seconds=self.settings.lease_s))
                )
                session.commit()
                if taken.rowcount == 1:
                    return job_id
        return None

    def heartbeat(self, job_id: str, expected: JobState) -> None:
        with self.sessions() as session:
            renewed = session.execute(
                update(Job)
                .where(Job.id == job_id, Job.lease_owner == self.owner,
                       Job.state == expected.value)
                .values(lease_expires_at=utcnow() + timedelta(seconds=self.settings.lease_s))
            )
            session.commit()
        if renewed.rowcount != 1:
            raise LeaseLost(f"job {job_id} left state {expected} or its lease was taken")

    def release(self, job_id: str) -> None:
        with self.sessions() as session:
            session.execute(
                update(Job).where(Job.id == job_id, Job.lease_owner == self.owner)
                .values(lease_owner=None, lease_expires_at=None)
            )
            session.commit()

    # -- driving -------------------------------------------------------------------------
    def _owned(self, session: Session, job_id: str) -> Job:
        """The job row, locked, if this worker still holds it and it is still running."""
        job = session.get_one(Job, job_id, with_for_update=True)
        if job.lease_owner != self.owner or JobState(job.state).terminal:
            raise LeaseLost(f"job {job_id} is {job.state} and held by {job.lease_owner}")
        return job

    def _move(self, job_id: str, to: JobState, reason: str = "", **fields: object) -> None:
        with self.sessions() as session:
            job = self._owned(session, job_id)
            for name, value in fields.items():
                setattr(job, name, value)
            transition(session, job, to, self.topics, reason)
            session.commit()

    def _load(self, job_id: str) -> Job:
        with self.sessions() as session:
            return session.get_one(Job, job_id)

    def run_job(self, job_id: str) -> None:
        steps = {
            JobState.validating: self._validate,
            JobState.queued: self._train,
            JobState.training: self._train,
            JobState.evaluating: self._evaluate,
            JobState.handing_off: self._hand_off,
        }
        try:
            while not self.stopping.is_set():
                job = self._load(job_id)
                state = JobState(job.state)
                if state.terminal or job.lease_owner != self.owner:
                    return
                try:
                    steps[state](job)
                except StageFailed as exc:
                    self._move(job_id, JobState.failed, str(exc))
        except LeaseLost as exc:
            log.info("%s", exc)
        finally:
            self.release(job_id)

    def _job_dir(self, job: Job) -> Path:
        path = self.settings.jobs_dir / job.tenant / job.id
        path.mkdir(parents=True, exist_ok=True)
        return path

    def _validate(self, job: Job) -> None:
        """Resolve and freeze the effective recipe, then check the data with the pre-flight
        report; reject what can never run, before any training is launched."""
        request = FineTuneRequested.model_validate(job.request["data"])
        try:
            recipe = request.recipe_inline or load_recipe(request.recipe or "")
            recipe = request.overrides.apply(recipe)
            recipe = _with_extra_tasks(recipe, request.extra_eval_tasks)
            data = recipe.data.with_source(request.train_file, request.dataset)
            recipe = recipe.model_copy(update={"data": data})
            if data.train_file is not None and not Path(data.train_file).is_file():
                raise RecipeError(f"data.train_file: no such file {data.train_file}")
            tokenizer = load_tokenizer(recipe.model.base, self.settings.models_dir)
            report = build_report(recipe, tokenizer)
        except (RecipeError, BaseModelError, TaskConfigError, DataValidationError) as exc:
            self._move(job.id, JobState.rejected, str(exc))
            return
        work = self._job_dir(job)
        report.write(work / PREFLIGHT)
        frozen = {"recipe": recipe.model_dump(mode="json"), "work_dir": str(work),
                  "preflight": report.model_dump(mode="json")}
        if report.usable:
            self._move(job.id, JobState.queued, report.summary(), **frozen)
        else:
            self._move(job.id, JobState.rejected, f"{report.summary()}\n{report.reason}",
                       **frozen)

    def _watch(self, job: Job, expected: JobState, run: RunHandle, progress: Path) -> int:
        """Wait for a stage process, relaying progress lines and renewing the lease."""
        offset = 0
        last_beat = 0.0
        while (code := run.poll()) is None:
            offset = self._relay_progress(job, progress, offset)
            if time.monotonic() - last_beat > self.settings.lease_s / 4:
                try:
                    self.heartbeat(job.id, expected)
                except LeaseLost:
                    run.terminate()
                    raise
                last_beat = time.monotonic()
            if self.stopping.wait(0.5):
                run.terminate()
                raise LeaseLost(f"worker stopping; job {job.id} will be re-adopted")
        self._relay_progress(job, progress, offset)
        return code

    def _relay_progress(self, job: Job, progress: Path, offset: int) -> int:
        """Progress events are best-effort and go straight to Kafka, not through the outbox."""
        if not progress.exists():
            return offset
        with progress.open() as f:
            f.seek(offset)
            for line in f:
                if not line.endswith("\n"):
                    break
                offset += len(line.encode())
                if time.monotonic() < self._progress_paused_until:
                    continue  # the broker is away; skip rather than stall the watch loop
                p = ProgressLine.model_validate_json(line)
                data = JobProgress(job_id=job.id, **p.model_dump())
                try:
                    publish(self.producer, self.topics.status,
                            envelope(data, source=SOURCE, tenant=job.tenant, subject=job.id),
                            key=job.id)
                except Exception as exc:
                    log.warning("progress events for %s paused: %s", job.id, exc)
                    self._progress_paused_until = time.monotonic() + 30
        return offset

    def _run_stage(self, job: Job, expected: JobState, command: StageCommand,
                   write_spec: Callable[[], None], log_path: Path, progress: Path) -> RunHandle:
        """Attach to the stage run a previous worker started, or start it; wait for the end.

        A job re-adopted after its orchestrator was killed thus never trains twice: the
        first run is still going (or finished and left its exit code) and is watched instead.
        """
        run: RunHandle | None = None
        ref = job.run_ref
        if ref and ref.get("module") == command.module:
            run = get_launcher(ref["launcher"], self.settings.slurm).attach(ref)
            if run.poll() == LOST:
                log.warning("job %s: %s run vanished; starting it again", job.id, command.module)
                run = None
        if run is None:
            write_spec()
            run = self.launcher.start(command, log_path)
            self._record_run(job.id, run.ref)
        code = self._watch(job, expected, run, progress)
        if code != 0:
            raise StageFailed(f"{command.module} exited with code {code}:\n{run.log_tail()}")
        return run

    def _record_run(self, job_id: str, ref: dict) -> None:
        with self.sessions() as session:
            self._owned(session, job_id).run_ref = ref
            session.commit()

    def _train(self, job: Job) -> None:
        if job.state == JobState.queued:
            self._move(job.id, JobState.training, "training started")
            job = self._load(job.id)
        recipe = Recipe.model_validate(job.recipe)
        work = Path(job.work_dir or self._job_dir(job))
        spec_path = work / TRAINING_SPEC
        self._run_stage(
            job, JobState.training,
            StageCommand("finetune.train", spec_path, recipe.train.num_processes),
            lambda: TrainingSpec(job_id=job.id, tenant=job.tenant, recipe=recipe,
                                 work_dir=str(work),
                                 model_cache_dir=str(self.settings.models_dir)).write(spec_path),
            work / "training.log", work / PROGRESS_LOG,
        )
        result = TrainingResult.read(work / TRAINING_RESULT)
        self._move(job.id, JobState.evaluating,
                   f"trained {result.steps} steps, final loss {result.final_loss:.4f}",
                   adapter_uri=Path(result.adapter_dir).as_uri())

    def _evaluate(self, job: Job) -> None:
        recipe = Recipe.model_validate(job.recipe)
        work = Path(job.work_dir or self._job_dir(job))
        trained = TrainingResult.read(work / TRAINING_RESULT)
        spec_path = work / EVALUATION_SPEC
        out = work / "evaluation"
        out.mkdir(exist_ok=True)
        self._run_stage(
            job, JobState.evaluating,
            StageCommand("evaluation.run", spec_path, recipe.eval.num_processes,
                         distributed=recipe.eval.num_processes > 1),
            lambda: EvaluationSpec(job_id=job.id, base_model_dir=trained.base_model_dir,
                                   adapter_dir=trained.adapter_dir, recipe=recipe,
                                   output_dir=str(out)).write(spec_path),
            work / "evaluation.log", out / PROGRESS_LOG,
        )
        result = EvaluationResult.read(out / EVALUATION_RESULT)
        scores, decision = decide(recipe, result)
        samples = {(m.task, m.metric): m for m in result.tuned}
        with self.sessions() as session:
            row = self._owned(session, job.id)
            row.gate_passed, row.gate_reason = decision.passed, decision.reason
            for s in scores:
                m = samples[(s.task, s.metric)]
                session.add(Score(
                    job_id=job.id, task=s.task, metric=s.metric, base=s.base, tuned=s.tuned,
                    base_stderr=s.base_stderr, tuned_stderr=s.tuned_stderr,
                    num_fewshot=m.num_fewshot, samples=m.samples,
                    lm_eval_version=result.lm_eval_version,
                    task_config_sha256=result.task_config_sha256.get(s.task, ""),
                ))
            enqueue_event(session, self.topics.models, EvaluationCompleted(
                job_id=job.id, tenant=job.tenant, scores=scores, gate=decision), job=row)
            to = JobState.handing_off if decision.passed else JobState.rejected
            transition(session, row, to, self.topics, decision.reason)
            session.commit()

    def _hand_off(self, job: Job) -> None:
        recipe = Recipe.model_validate(job.recipe)
        work = Path(job.work_dir or self._job_dir(job))
        trained = TrainingResult.read(work / TRAINING_RESULT)
        with self.sessions() as session:
            row = self._owned(session, job.id)
            scores = [MetricScore(task=s.task, metric=s.metric, base=s.base, tuned=s.tuned,
                                  base_stderr=s.base_stderr, tuned_stderr=s.tuned_stderr)
                      for s in row.scores]
        ready = ModelReady(job_id=job.id, tenant=job.tenant, base_model=recipe.model.base,
                           adapter_uri=Path(trained.adapter_dir).as_uri(),
                           files_sha256=trained.files_sha256, scores=scores,
                           merged_uri=(Path(trained.merged_dir).as_uri() if trained.merged_dir
                                       else None),
                           merged_files_sha256=trained.merged_files_sha256)
        if self.settings.inference_lora_url is not None:
            try:
                notify_inference(str(self.settings.inference_lora_url), job.id,
                                 trained.adapter_dir)
            except Exception as exc:
                raise StageFailed(f"inference server refused the adapter: {exc}") from exc
        with self.sessions() as session:
            row = self._owned(session, job.id)
            enqueue_event(session, self.topics.models, ready, job=row,
                          event_id=f"{job.id}:model-ready")
            transition(session, row, JobState.succeeded, self.topics, "model handed off")
            session.commit()

    def run(self) -> None:
        while not self.stopping.is_set():
            try:
                job_id = self.claim()
            except Exception:
                log.exception("claiming a job failed")
                job_id = None
            if job_id is None:
                self.stopping.wait(1.0)
                continue
            log.info("%s runs job %s", self.owner, job_id)
            try:
                self.run_job(job_id)
            except Exception:
                log.exception("job %s crashed its worker; it will be re-adopted", job_id)

