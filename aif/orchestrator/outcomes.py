"""What a failed step means for a job, and what is left once it ended.

Kept apart from the worker loop because an evaluation run shared by several jobs (see
`batches`) settles each of its jobs the same way the worker settles the one it drives.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from pathlib import Path

from sqlalchemy.orm import Session, sessionmaker

from aif import storage
from aif.db.models import Job, utcnow
from aif.jobstore.transitions import advance
from aif.orchestrator.errors import RetryableError, StageRunFailed
from aif.orchestrator.leases import Leases
from aif.settings import Settings
from events.recipe import Recipe
from events.states import JobState

log = logging.getLogger(__name__)


class Outcomes:
    def __init__(self, settings: Settings, sessions: sessionmaker[Session], leases: Leases
                 ) -> None:
        self.settings, self.sessions, self.leases = settings, sessions, leases

    def end(self, job_id: str, to: JobState, reason: str) -> None:
        with self.sessions() as session:
            job = self.leases.owned(session, job_id)
            advance(session, job, to, self.settings.topics, reason)
            session.commit()

    def retry_later(self, job_id: str, state: JobState, exc: Exception) -> bool:
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

    def remove_scratch(self, job_id: str) -> None:
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
