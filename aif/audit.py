"""The audit log: who did what, recorded in the transaction of the act itself.

Every act on a tenant's jobs, files, keys and data calls `record` with the caller's session,
so an act is audited if and only if it was committed. A row names the actor (an API key,
a signing key, the operator or the service), the action, the job and event ids and the
sha256 of the payload; never the payload itself, so the log may outlive an erasure. The
table is append-only in the database (see migration 0011).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from enum import StrEnum
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from aif.db import appends
from aif.db.models import Audit

OPERATOR = "operator"
"""Actor of `aif ...` commands run by the centre's operators."""
SERVICE = "service"
"""Actor of what the orchestrator does by itself (state changes, hand-offs)."""


class Action(StrEnum):
    submit = "submit"  # intake stored a job
    state = "state"  # a job moved (detail: from, to)
    cancel = "cancel"
    publish = "publish"
    hand_off = "hand-off"
    refuse = "refuse"  # a dead-lettered record
    key_created = "key-created"
    key_revoked = "key-revoked"
    upload = "upload"
    file_deleted = "file-deleted"
    erase = "erase"
    retire = "model-retired"


def api_actor(key_id: str) -> str:
    return f"api:{key_id}"


def signing_actor(key_id: str) -> str:
    return f"signing:{key_id}"


def sha256(data: bytes | str | None) -> str | None:
    if data is None:
        return None
    return hashlib.sha256(data.encode() if isinstance(data, str) else data).hexdigest()


def record(session: Session, action: Action, *, actor: str, tenant: str | None,
           job_id: str | None = None, event_id: str | None = None,
           payload_sha256: str | None = None, **detail: Any) -> None:
    """Append one row to the caller's transaction; `detail` holds ids, counts and digests."""
    appends.add(session, Audit, tenant=tenant, actor=actor, action=action.value, job_id=job_id,
                event_id=event_id, sha256=payload_sha256, detail=detail)


def entries(session: Session, tenant: str | None = None, job_id: str | None = None
            ) -> Iterator[Audit]:
    """Rows in the order they were written, optionally of one tenant and/or one job."""
    query = select(Audit).order_by(Audit.id)
    if tenant is not None:
        query = query.where(Audit.tenant == tenant)
    if job_id is not None:
        query = query.where(Audit.job_id == job_id)
    yield from session.scalars(query)
