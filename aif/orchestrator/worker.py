"""Job workers: claim a job, run the step of its state, and decide what a failure means.

The worker never trains or evaluates itself (see `stage_runs`). Each step is chosen from the
job's stored state (see `steps`), so a job whose worker died is re-adopted by any
orchestrator once the lease has expired and continues from the last committed state. No
exception leaves a step: a final error ends the job with its reason, anything else backs the
job off for a bounded number of attempts, and the next job is claimed meanwhile.
"""

from __future__ import annotations

import logging
import threading
import uuid
from datetime import timedelta
from pathlib import Path

from sqlalchemy.orm import Session, sessionmaker

from aif import storage
from aif.db.models import Job, utcnow
from aif.launchers import Launcher
from aif.logs import job_context
from aif.orchestrator.errors import FinalError, LeaseLost, RetryableError, StageRunFailed
from aif.orchestrator.leases import Leases
from aif.orchestrator.stage_runs import StageRunner
from aif.orchestrator.steps import Steps, advance
from aif.settings import Settings
from events.recipe import Recipe
from events.states import JobState

log = logging.getLogger(__name__)


def final_state(state: JobState) -> JobState:
    """Where a final error ends a job: nothing was trained yet -> rejected, else failed."""
    return JobState.rejected if state is JobState.validating else JobState.failed


class JobWorker:
    def __init__(
        self,
        settings: Settings,
        sessions: sessionmaker[Session],
        launcher: Launcher,
    ) -> None:
        self.settings, self.sessions = settings, sessions
        self.owner = f"worker-{uuid.uuid4().hex[:12]}"
        self.stopping = threading.Event()
        self.leases = Leases(sessions, self.owner, settings.lease_s)
        self.runner = StageRunner(settings, sessions, self.leases, launcher, self.stopping)
        self.steps = Steps(settings, sessions, self.leases, self.runner)

    def load(self, job_id: str) -> Job:
        with self.sessions() as session:
            return session.get_one(Job, job_id)

    def run_job(self, job_id: str) -> None:
        """Drive the job until it ends, backs off, or is no longer ours."""
        try:
            while not self.stopping.is_set():
                job = self.load(job_id)
                state = JobState(job.state)
                if state.terminal or job.lease_owner != self.owner:
                    return
                try:
                    self.steps.for_state(state)(job)
                except LeaseLost:
                    raise
                except FinalError as exc:
                    self._end(job_id, final_state(state), str(exc))
                except Exception as exc:
                    if not self._retry_later(job_id, state, exc):
                        return
        except LeaseLost as exc:
            log.info("%s", exc)
        finally:
            self._remove_scratch(job_id)  # before letting go: an erasure waits for that
            self.leases.release(job_id)

    def _remove_scratch(self, job_id: str) -> None:
        """Once the job has ended, delete its scratch space (see `aif.storage.scratch`); a
        cancelled job's stage was stopped and waited for by the runner before this."""
        with self.sessions() as session:
            job = session.get(Job, job_id)
            if job is None or job.work_dir is None or not JobState(job.state).terminal:
                return
            recipe = Recipe.model_validate(job.recipe) if job.recipe else None
            work_dir = Path(job.work_dir)
        for path in storage.scratch(work_dir, recipe):
            try:
                storage.remove(path, digests=False)
            except OSError as exc:
                log.warning("job %s: scratch %s not removed: %s", job_id, path.name, exc)

    def _end(self, job_id: str, to: JobState, reason: str) -> None:
        with self.sessions() as session:
            job = self.leases.owned(session, job_id)
            advance(session, job, to, self.settings.topics, reason)
            session.commit()

    def _retry_later(self, job_id: str, state: JobState, exc: Exception) -> bool:
        """Count a failed attempt; back off, or fail the job once attempts are used up.

        Returns False when the job backs off (the worker lets go of it meanwhile).
        """
        reason = str(exc) if isinstance(exc, RetryableError) else (
            f"internal error in the {state} step: {type(exc).__name__}")
        if not isinstance(exc, RetryableError):
            log.error("job %s: %s", job_id, reason, exc_info=exc)
        with self.sessions() as session:
            job = self.leases.owned(session, job_id)
            job.attempts += 1
            if isinstance(exc, StageRunFailed):
                job.run_ref = None  # that run is over; the next attempt starts a new one
            if job.attempts >= self.settings.max_attempts:
                advance(session, job, JobState.failed, self.settings.topics,
                        f"gave up after {job.attempts} attempts: {reason}")
                session.commit()
                return True
            delay = self.settings.retry_delay_s(job.attempts)
            job.next_attempt_at = utcnow() + timedelta(seconds=delay)
            job.reason = (f"attempt {job.attempts} of {self.settings.max_attempts} failed, "
                          f"next in {delay:.0f} s: {reason}")
            session.commit()
        log.warning("job %s: %s", job_id, job.reason)
        return False

    def run(self) -> None:
        while not self.stopping.is_set():
            try:
                job_id = self.leases.claim()
            except Exception as exc:
                log.warning("claiming a job failed: %s", exc)
                job_id = None
            if job_id is None:
                self.stopping.wait(1.0)
                continue
            log.info("%s runs job %s", self.owner, job_id)
            try:
                with job_context(self.sessions, job_id):
                    self.run_job(job_id)
            except Exception as exc:  # the database went away while recording the outcome
                log.warning("job %s: outcome not recorded (%s); it will be re-adopted",
                            job_id, type(exc).__name__)
