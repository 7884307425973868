"""Per-tenant quotas: concurrent jobs, training data size, trained tokens and device-hours per
calendar month (UTC).

A tenant's own limit (`aif tenants set-quota`, table `tenant_quotas`) wins over the site
default (`AIF_QUOTA_DEFAULTS__*`); with neither, the resource is unlimited. A job is checked
after its pre-flight, when its numbers are known, and before it is queued: over a limit it is
rejected with the numbers. Usage counts only the tenant's own jobs: a job counts what its
training measured once trained; before that (and if it failed or was cancelled without a
result) its estimate, so a month cannot be overrun by jobs queued side by side; a job rejected
before training counts nothing. Jobs count in the month they were created.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select, text, update
from sqlalchemy.orm import Session

from aif.db.models import Job, Tenant, TenantQuota, utcnow
from aif.settings import QuotaLimits
from aif.tenants import TenantError
from events.states import JobState
from stagefiles.preflight_report import Estimate

RUNNING = [s.value for s in (JobState.queued, JobState.training, JobState.evaluating,
                             JobState.handing_off)]
"""Non-terminal states past validation: the jobs the concurrent-jobs limit counts."""


@dataclass(frozen=True)
class Limit:
    value: int | float
    source: str  # "tenant limit" or "site default"

    def __str__(self) -> str:
        shown = f"{self.value:,g}" if isinstance(self.value, float) else f"{self.value:,}"
        return f"{self.source} {shown}"


@dataclass(frozen=True)
class Usage:
    """What the tenant's other jobs hold or used this month."""

    running_jobs: int
    tokens: int
    device_hours: float


def limits(session: Session, tenant: str, defaults: QuotaLimits) -> dict[str, Limit]:
    """The limits that apply to `tenant`, by QuotaLimits field name; absent: unlimited."""
    own = session.get(TenantQuota, tenant)
    found = {}
    for name in QuotaLimits.model_fields:
        value = getattr(own, name) if own is not None else None
        if value is not None:
            found[name] = Limit(value, "tenant limit")
        elif (default := getattr(defaults, name)) is not None:
            found[name] = Limit(default, "site default")
    return found


def set_quota(session: Session, tenant: str, changes: dict[str, int | float | None]) -> None:
    """Set (a number) or clear (None: back to the site default) the tenant's own limits
    named in `changes`; the caller commits."""
    if session.get(Tenant, tenant) is None:
        raise TenantError(f"tenant {tenant}: no such tenant")
    checked = QuotaLimits.model_validate(changes)  # the same rules as the site defaults
    row = session.get(TenantQuota, tenant) or TenantQuota(tenant=tenant)
    for name in changes:
        setattr(row, name, getattr(checked, name))
    row.updated_at = utcnow()
    session.add(row)


def month_start(now: datetime) -> datetime:
    return now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)


def usage(session: Session, tenant: str, now: datetime, excluding: str | None = None) -> Usage:
    """The tenant's running jobs and this calendar month's tokens and device-hours."""
    others = Job.tenant == tenant
    if excluding is not None:
        others &= Job.id != excluding
    running = session.scalar(select(func.count()).select_from(Job).where(
        others, Job.state.in_(RUNNING))) or 0
    tokens, hours = 0, 0.0
    for state, estimate, measured in session.execute(
            select(Job.state, Job.estimate, Job.measured).where(
                others, Job.created_at >= month_start(now))):
        counted = measured or (estimate if state != JobState.rejected else None)
        if counted:
            tokens += counted["tokens"]
            hours += counted["device_hours"]
    return Usage(running, tokens, hours)


def serialise(session: Session, tenant: str) -> None:
    """Hold the tenant's quota lock until the transaction ends, so two workers admitting
    jobs of one tenant cannot both count the same free slot."""
    if session.get_bind().dialect.name == "postgresql":
        key = int.from_bytes(hashlib.sha256(f"aif-quota:{tenant}".encode()).digest()[:8],
                             "big", signed=True)
        session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": key})
    else:
        # SQLite: a write as the transaction's first statement takes the database's write
        # lock (waiting for it) and reads the newest data from then on; held until commit.
        session.execute(update(TenantQuota).where(TenantQuota.tenant == tenant)
                        .values(tenant=TenantQuota.tenant))


def refusal(session: Session, job: Job, estimate: Estimate | None,
            defaults: QuotaLimits) -> str | None:
    """Why `job` may not be queued, with the numbers, or None; takes the tenant's quota lock
    first (see `serialise`), which the caller's commit releases."""
    serialise(session, job.tenant)
    found = limits(session, job.tenant, defaults)
    if not found:
        return None
    used = usage(session, job.tenant, utcnow(), excluding=job.id)
    problems = []
    if (limit := found.get("concurrent_jobs")) is not None and used.running_jobs >= limit.value:
        problems.append(f"quota: needs 1 concurrent job, {used.running_jobs} already queued or "
                        f"running ({limit} concurrent jobs)")
    if estimate is None:
        return "; ".join(problems) or None
    data = estimate.data_bytes
    if (limit := found.get("dataset_bytes")) is not None and data is not None and (
            data > limit.value):
        problems.append(f"quota: training data is {data:,} bytes ({limit} bytes of dataset "
                        "size)")
    if (limit := found.get("monthly_tokens")) is not None and (
            estimate.tokens > limit.value - used.tokens):
        left = max(0, int(limit.value) - used.tokens)
        problems.append(f"quota: needs {estimate.tokens:,} tokens, {left:,} left this month "
                        f"({limit} tokens a month)")
    if (limit := found.get("monthly_device_hours")) is not None and (
            estimate.device_hours > limit.value - used.device_hours):
        left_h = max(0.0, limit.value - used.device_hours)
        problems.append(f"quota: needs {estimate.device_hours:.2g} device-h, {left_h:.2g} left "
                        f"this month ({limit} device-h a month)")
    return "; ".join(problems) or None


def dataset_limit(session: Session, tenant: str, defaults: QuotaLimits) -> Limit | None:
    """The largest training file the tenant may upload, if it has a limit."""
    return limits(session, tenant, defaults).get("dataset_bytes")
