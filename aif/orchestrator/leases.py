"""Job leases: which worker drives a job, for how long, and when a job may be tried again.

A lease is a compare-and-set on the job row, renewed while a step runs. A worker that dies
stops renewing, and any orchestrator claims the job once the lease has expired. A job backing
off after a retryable failure is not claimed before its `next_attempt_at`, so it never holds
up the jobs behind it.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta

from sqlalchemy import ColumnElement, and_, or_, select, update
from sqlalchemy.orm import Session, sessionmaker

from aif.db.models import Job, utcnow
from aif.orchestrator.errors import LeaseLost
from events.states import TERMINAL_STATES, JobState

ACTIVE_STATES = [s.value for s in JobState if s not in TERMINAL_STATES]


def _waiting_for_companions(now: datetime) -> ColumnElement[bool]:
    """In `evaluating`, let go to wait for others (`batches.defer`): no failed attempt, a next
    attempt time set, no live lease. Such a job may join another's run before its time."""
    return and_(
        Job.state == JobState.evaluating.value, Job.attempts == 0,
        Job.next_attempt_at.is_not(None),
        or_(Job.lease_expires_at.is_(None), Job.lease_expires_at < now),
    )


def _claimable(now: datetime) -> ColumnElement[bool]:
    return and_(
        Job.state.in_(ACTIVE_STATES),
        or_(Job.lease_expires_at.is_(None), Job.lease_expires_at < now),
        or_(Job.next_attempt_at.is_(None), Job.next_attempt_at <= now),
    )


class Leases:
    def __init__(self, sessions: sessionmaker[Session], owner: str, lease_s: float) -> None:
        self.sessions, self.owner, self.lease_s = sessions, owner, lease_s

    def claim(self) -> str | None:
        """Atomically take the oldest claimable job (compare-and-set on the lease)."""
        with self.sessions() as session:
            now = utcnow()
            candidates = session.scalars(
                select(Job.id).where(_claimable(now)).order_by(Job.created_at).limit(10)
            ).all()
            for job_id in candidates:
                taken = session.execute(
                    update(Job)
                    .where(Job.id == job_id, _claimable(now))
                    .values(lease_owner=self.owner,
                            lease_expires_at=now + timedelta(seconds=self.lease_s))
                )
                session.commit()
                if taken.rowcount == 1:
                    return job_id
        return None

    def claim_companions(self, leader: Job, fits: Callable[[Job], bool], most: int) -> list[str]:
        """Take up to `most` other claimable jobs of the leader's tenant in `evaluating` that
        `fits` accepts, oldest first among the oldest `4 * most` waiting, with the
        compare-and-set of `claim`. `fits` is asked again once a job is taken (it may have
        moved meanwhile); one it refuses is let go."""
        taken: list[str] = []
        with self.sessions() as session:
            now = utcnow()
            candidates = session.scalars(
                select(Job).where(or_(_claimable(now), _waiting_for_companions(now)),
                                  Job.tenant == leader.tenant,
                                  Job.state == JobState.evaluating.value, Job.id != leader.id)
                .order_by(Job.created_at).limit(max(most, 0) * 4)
            ).all()
            for job in [j for j in candidates if fits(j)]:
                if len(taken) >= most:
                    break
                won = session.execute(
                    update(Job)
                    .where(Job.id == job.id, Job.tenant == leader.tenant,
                           Job.state == JobState.evaluating.value,
                           or_(_claimable(now), _waiting_for_companions(now)))
                    .values(lease_owner=self.owner,
                            lease_expires_at=now + timedelta(seconds=self.lease_s))
                    # the loaded rows are read again below; SQLite's naive datetimes cannot
                    # be compared in Python with `now`
                    .execution_options(synchronize_session=False)
                )
                session.commit()
                if won.rowcount != 1:
                    continue
                if fits(session.get_one(Job, job.id, populate_existing=True)):
                    taken.append(job.id)
                else:
                    self.release(job.id)
        return taken

    def heartbeat(self, job_id: str, expected: JobState) -> None:
        with self.sessions() as session:
            renewed = session.execute(
                update(Job)
                .where(Job.id == job_id, Job.lease_owner == self.owner,
                       Job.state == expected.value)
                .values(lease_expires_at=utcnow() + timedelta(seconds=self.lease_s))
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

    def owned(self, session: Session, job_id: str) -> Job:
        """The job row, locked, if this worker still holds it and it is still running."""
        job = session.get_one(Job, job_id, with_for_update=True)
        if job.lease_owner != self.owner or JobState(job.state).terminal:
            raise LeaseLost(f"job {job_id} is {job.state} and held by {job.lease_owner}")
        return job
