"""Right to erasure: a tenant, or one uploaded file and what was trained on it, removed.

Order matters. The tenant is first marked erased and its keys deleted (committed), so no new
request, API call or signature of it counts from then on. Its running jobs are then cancelled
through the state machine and their stage processes stopped and waited for, so no stage
writes into a folder being removed. Files are hashed and removed next, and last, in one
transaction, every row about the tenant or those jobs is deleted, a `model.retired` event is
put in the outbox for each handed-off model, and ONE audit row lists what went: counts per
table and the sha256 of every removed file, never content. Audit rows are never deleted (the
database refuses it). A run that stops half-way (a stage that would not stop, a crash) is
simply run again: every step finds what is left.

Rows are found through the metadata, not a list kept by hand: a table with a `tenant`
column loses the tenant's rows, one with a `job_id` column (or the outbox, keyed by job id)
those of the jobs, so a table added later is erased without changing this module.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import ColumnElement, Table, delete, func, select
from sqlalchemy.orm import Session, sessionmaker

from aif import audit, registry, storage
from aif.db.models import (
    ApiKey,
    Audit,
    Base,
    DataFile,
    Job,
    Outbox,
    SigningKey,
    Tenant,
    utcnow,
)
from aif.jobstore import commands
from aif.launchers import get_launcher, stop
from aif.settings import Settings
from events.states import JobState

STOP_TIMEOUT_S = 120.0
FILE_ERASED = "file-erased"
_KEEP = {Audit.__tablename__, Tenant.__tablename__}
"""Never erased by table scan: the audit log, and the tenant row (kept as a tombstone)."""


class ErasureError(RuntimeError):
    """Erasure could not finish (a stage would not stop); running it again continues it."""


@dataclass
class Erased:
    rows: Counter[str] = field(default_factory=Counter)  # table -> rows deleted
    files: dict[str, str] = field(default_factory=dict)  # path -> sha256
    retired: list[str] = field(default_factory=list)  # job ids of retired models


def _stop_jobs(sessions: sessionmaker[Session], settings: Settings, job_ids: list[str],
               reason: str, timeout_s: float) -> None:
    """End every job still running through the cancel path, then make sure its stage
    process is gone: the worker stops it at its next heartbeat; we signal it as well and
    wait, so nothing writes into the folders about to be removed."""
    refs = []
    with sessions() as session:
        for job_id in job_ids:
            job = session.get_one(Job, job_id, with_for_update=True)
            state = JobState(job.state)
            commands.end(session, job, settings.topics, reason, audit.OPERATOR)
            if job.run_ref and (not state.terminal or state is JobState.cancelled):
                refs.append((job.id, job.run_ref))  # a cancelled stage may still be stopping
        session.commit()
    deadline = time.monotonic() + timeout_s
    for job_id, ref in refs:
        run = get_launcher(ref["launcher"], settings).attach(ref)
        if run.poll() is None and not stop(run, max(deadline - time.monotonic(), 0.0)):
            raise ErasureError(f"job {job_id}: its {ref.get('module')} stage did not stop "
                               f"within {timeout_s:g} s; run the erasure again")
    _wait_for_workers(sessions, job_ids, deadline)


def _wait_for_workers(sessions: sessionmaker[Session], job_ids: list[str],
                      deadline: float) -> None:
    """Until no worker holds a lease on the jobs: a worker lets go only after its last
    write into the job's folder (see JobWorker.run_job), and a dead one's lease expires."""
    while True:
        with sessions() as session:
            held = session.scalars(select(Job.id).where(
                Job.id.in_(job_ids), Job.lease_owner.is_not(None),
                Job.lease_expires_at > utcnow()).limit(1)).first()
        if held is None:
            return
        if time.monotonic() > deadline:
            raise ErasureError(f"job {held}: its worker still holds it; run the erasure again")
        time.sleep(0.2)


def _job_tables() -> list[tuple[Table, str]]:
    """(table, column naming a job) of every table holding rows about a job, jobs last."""
    found = [(t, "job_id") for t in reversed(Base.metadata.sorted_tables)
             if "job_id" in t.c and t.name not in _KEEP]
    return [*found, (_table(Outbox), "key"), (_table(Job), "id")]


def _tenant_tables() -> list[Table]:
    return [t for t in reversed(Base.metadata.sorted_tables)
            if "tenant" in t.c and t.name not in _KEEP and t.name != Job.__tablename__]


def _table(model: type[Base]) -> Table:
    return Base.metadata.tables[model.__tablename__]


def _delete(session: Session, table: Table, where: ColumnElement[bool], erased: Erased) -> None:
    count = session.scalar(select(func.count()).select_from(table).where(where))
    if count:
        session.execute(delete(table).where(where))
        erased.rows[table.name] += count


def _erase_jobs(session: Session, settings: Settings, jobs: list[Job], reason: str,
                erased: Erased) -> None:
    """Delete every row about `jobs`, then announce each handed-off model as retired (after
    the jobs' own outbox rows went, so its row stays)."""
    ids = [j.id for j in jobs]
    handed_off = [j for j in jobs if j.state == JobState.succeeded]
    registry.withdraw(session, settings, ids)  # published copies and loaded adapters
    for table, column in _job_tables():
        _delete(session, table, table.c[column].in_(ids), erased)
    for job in handed_off:
        commands.retire(session, settings.topics, job, reason)
        erased.retired.append(job.id)


def _folders(settings: Settings, jobs: list[Job]) -> list[Path]:
    default = [storage.jobs_root(settings.jobs_dir, j.tenant) / j.id for j in jobs]
    return [*default, *(Path(j.work_dir) for j in jobs if j.work_dir)]


def _remove_files(paths: list[Path], erased: Erased) -> None:
    for path in paths:
        erased.files |= storage.remove(path)


def _detail(erased: Erased) -> dict[str, object]:
    return {"rows": dict(sorted(erased.rows.items())), "files_sha256": erased.files,
            "retired": erased.retired}


def erase_tenant(sessions: sessionmaker[Session], settings: Settings, tenant: str,
                 timeout_s: float = STOP_TIMEOUT_S) -> Erased:
    """Erase everything of `tenant` but its tombstone and the audit log; see the module."""
    erased = Erased()
    with sessions() as session:
        row = session.get(Tenant, tenant, with_for_update=True)
        if row is None:
            raise ErasureError(f"tenant {tenant}: no such tenant")
        row.erased_at = row.erased_at or utcnow()
        for key in (_table(ApiKey), _table(SigningKey)):  # nothing of it counts from now
            _delete(session, key, key.c.tenant == tenant, erased)
        session.commit()
        job_ids = list(session.scalars(select(Job.id).where(Job.tenant == tenant)))
    _stop_jobs(sessions, settings, job_ids, "tenant erased", timeout_s)
    with sessions() as session:
        jobs = list(session.scalars(select(Job).where(Job.tenant == tenant)))
        _remove_files([*_folders(settings, jobs),
                       storage.data_root(settings.data_root, tenant),
                       storage.jobs_root(settings.jobs_dir, tenant),
                       storage.base_scores(settings.base_scores_dir, tenant)], erased)
        _erase_jobs(session, settings, jobs, commands.ERASED, erased)
        outbox = _table(Outbox)  # what is left on its status topic: refusals without a job
        _delete(session, outbox, outbox.c.topic == settings.topics.status(tenant), erased)
        for table in _tenant_tables():
            _delete(session, table, table.c.tenant == tenant, erased)
        audit.record(session, audit.Action.erase, actor=audit.OPERATOR, tenant=tenant,
                     **_detail(erased))
        session.commit()
    return erased


def jobs_trained_on(session: Session, file: DataFile) -> list[Job]:
    """The jobs of the file's tenant whose request named the file."""
    return list(session.scalars(select(Job).where(
        Job.tenant == file.tenant, Job.request["data"]["file_id"].as_string() == file.id)))


def erase_file(sessions: sessionmaker[Session], settings: Settings, file_id: str, actor: str,
               timeout_s: float = STOP_TIMEOUT_S) -> Erased:
    """Erase one uploaded file and every job trained on it (their folders, scores, events),
    retiring the handed-off models; one audit row, as for a tenant."""
    erased = Erased()
    with sessions() as session:
        file = session.get_one(DataFile, file_id)
        tenant, job_ids = file.tenant, [j.id for j in jobs_trained_on(session, file)]
    _stop_jobs(sessions, settings, job_ids, "training file erased", timeout_s)
    with sessions() as session:
        file = session.get_one(DataFile, file_id)
        jobs = list(session.scalars(select(Job).where(Job.id.in_(job_ids))))
        folder = Path(file.path).parent
        _remove_files([*_folders(settings, jobs),
                       *([folder] if folder.name == file.id else [Path(file.path)])], erased)
        _erase_jobs(session, settings, jobs, FILE_ERASED, erased)
        _delete(session, _table(DataFile), DataFile.id == file_id, erased)
        audit.record(session, audit.Action.file_deleted, actor=actor, tenant=tenant,
                     file_id=file_id, cascade=True, **_detail(erased))
        session.commit()
    return erased
