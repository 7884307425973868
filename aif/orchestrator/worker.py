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

from sqlalchemy.orm import Session, sessionmaker

from aif.db.models import Job
from aif.jobstore.transitions import final_state
from aif.launchers import Launcher
from aif.logs import job_context
from aif.orchestrator.errors import Deferred, FinalError, LeaseLost
from aif.orchestrator.leases import Leases
from aif.orchestrator.outcomes import Outcomes
from aif.orchestrator.stage_runs import StageRunner
from aif.orchestrator.steps import Steps
from aif.settings import Settings
from events.states import JobState

log = logging.getLogger(__name__)


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
        self.outcomes = Outcomes(settings, sessions, self.leases)
        self.steps = Steps(settings, sessions, self.leases, self.runner, self.outcomes)

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
                except Deferred as exc:
                    log.info("job %s: %s", job_id, exc)
                    return
                except FinalError as exc:
                    self.outcomes.end(job_id, final_state(state), str(exc))
                except Exception as exc:
                    if not self.outcomes.retry_later(job_id, state, exc):
                        return
        except LeaseLost as exc:
            log.info("%s", exc)
        finally:
            self.outcomes.remove_scratch(job_id)  # before letting go: an erasure waits for that
            self.leases.release(job_id)

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
