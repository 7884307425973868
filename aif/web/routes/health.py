"""Probes for the platform: liveness and readiness, both without a key (they reveal nothing
of any tenant)."""

from __future__ import annotations

import logging

from fastapi import APIRouter
from pydantic import BaseModel
from sqlalchemy import text

from aif.web.deps import BusDep, Problem, SessionDep, problems
from aif.web.kafka import BrokerUnavailable

log = logging.getLogger(__name__)
router = APIRouter(tags=["health"])


class HealthPublic(BaseModel):
    status: str


@router.get("/healthz")
def healthz() -> HealthPublic:
    """The process answers; says nothing about its dependencies (that is `/readyz`)."""
    return HealthPublic(status="ok")


@router.get("/readyz", responses=problems(503))
def readyz(session: SessionDep, bus: BusDep) -> HealthPublic:
    """The job store and the broker both answer: the app can take requests."""
    try:
        session.execute(text("SELECT 1"))
    except Exception as exc:
        log.warning("readyz: database unreachable: %s", exc)
        raise Problem(503, "Service unavailable", "database unreachable") from exc
    try:
        bus.ready()
    except BrokerUnavailable as exc:
        raise Problem(503, "Service unavailable", str(exc)) from exc
    return HealthPublic(status="ready")
