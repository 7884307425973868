"""The model registry: every handed-off adapter is a version of a tenant's model.

A model's name is `<tenant>/<label>`: the request's `model` label, else the recipe's name.
Versions count from 1 per name. A version is `ready` once announced, `serving` once every
configured endpoint loaded it, `retired` once withdrawn (by `aif models retire`, the API,
or a newer version replacing it). Every read takes the tenant, so no lookup can reach
another tenant's model; the served name (`<tenant>.<label>.v<n>`) carries the tenant too.
"""

from __future__ import annotations

import re
from enum import StrEnum

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from aif.artifact_stores import ArtifactStore, artifact_store
from aif.db.models import Job, RegisteredModel, utcnow
from aif.jobstore import commands
from aif.jobstore.outbox import enqueue_event
from aif.serving_endpoints import Endpoints
from aif.settings import Settings
from events.messages import ModelServing

LABEL = "model"
"""The request label that names the model; without it the recipe's name does."""
_LABEL_RULE = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")


class Status(StrEnum):
    ready = "ready"
    serving = "serving"
    retired = "retired"


class RegistryError(LookupError):
    """No such model (or version) for this tenant; says which was asked for."""


def model_name(job: Job) -> str:
    """The name the job's model is registered under, `<tenant>/<model label or recipe>`:
    its versions replace each other (the pages label it by `board.display_name`)."""
    label = (job.request.get("data", {}).get("labels") or {}).get(LABEL, "")
    return f"{job.tenant}/{label if _LABEL_RULE.match(label) else job.recipe_name or 'model'}"


def served_name(name: str, version: int) -> str:
    return f"{name.replace('/', '.')}.v{version}"


def next_version(session: Session, tenant: str, name: str) -> int:
    latest = session.scalar(select(func.max(RegisteredModel.version)).where(
        RegisteredModel.tenant == tenant, RegisteredModel.name == name))
    return (latest or 0) + 1


def live_versions(session: Session, tenant: str, name: str) -> list[RegisteredModel]:
    return list(session.scalars(select(RegisteredModel).where(
        RegisteredModel.tenant == tenant, RegisteredModel.name == name,
        RegisteredModel.status != Status.retired).order_by(RegisteredModel.version)))


def list_models(session: Session, tenant: str | None) -> list[RegisteredModel]:
    """Every version of the tenant's models (None: every tenant's, for operators)."""
    query = select(RegisteredModel).order_by(RegisteredModel.name, RegisteredModel.version)
    if tenant is not None:
        query = query.where(RegisteredModel.tenant == tenant)
    return list(session.scalars(query))


def parse_ref(ref: str) -> tuple[str, int | None]:
    """`NAME[:VERSION]` -> (name, version or None for the latest)."""
    name, _, version = ref.partition(":")
    if version and not version.isdigit():
        raise RegistryError(f"{ref}: the version after ':' must be a number")
    return name, int(version) if version else None


def find(session: Session, tenant: str | None, name: str, version: int | None
         ) -> RegisteredModel:
    """The version (latest if None) of the tenant's model; RegistryError if it has none."""
    query = select(RegisteredModel).where(RegisteredModel.name == name)
    if tenant is not None:
        query = query.where(RegisteredModel.tenant == tenant)
    if version is not None:
        query = query.where(RegisteredModel.version == version)
    row = session.scalars(query.order_by(RegisteredModel.version.desc())).first()
    if row is None:
        raise RegistryError(f"model {name}{f':{version}' if version else ''}: no such model")
    return row


def published_store(settings: Settings) -> ArtifactStore:
    """The site's artifact store (`AIF_ARTIFACT_STORE`, default `<home>/published`)."""
    return artifact_store(settings.artifact_store or settings.published_dir.as_uri(),
                          settings.s3_endpoint_url)


def withdraw(session: Session, settings: Settings, job_ids: list[str]) -> None:
    """Unload and delete every published version these jobs trained (an erasure; their
    registry rows are deleted with the jobs' other rows)."""
    rows = session.scalars(select(RegisteredModel).where(RegisteredModel.job_id.in_(job_ids)))
    for row in rows:
        endpoints(settings).unload(row.served_name)
        published_store(settings).remove(row.served_name)


def endpoints(settings: Settings) -> Endpoints:
    return Endpoints([str(u) for u in settings.serving_endpoints], settings.serving_timeout_s,
                     settings.serving_attempts)


def record_serving(session: Session, settings: Settings, row: RegisteredModel, job: Job,
                   outcomes: dict[str, str], event_id: str) -> None:
    """Store the per-endpoint outcome on the version and publish it (`model.serving`)."""
    row.serving = {**row.serving, **outcomes}
    if row.status != Status.retired and outcomes and all(
            v == "loaded" for v in row.serving.values()):
        row.status = Status.serving
    enqueue_event(session, settings.topics.models, ModelServing(
        job_id=job.id, tenant=row.tenant, name=row.name, version=row.version,
        served_name=row.served_name, outcomes=outcomes, at=utcnow()), job=job,
        event_id=event_id)


def retire_row(session: Session, settings: Settings, row: RegisteredModel, reason: str,
               actor: str) -> None:
    """Unload it everywhere, remove its published files, mark it retired and announce it
    (`model.retired`), with its audit row, in the caller's transaction."""
    job = session.get_one(Job, row.job_id)
    outcomes = endpoints(settings).unload(row.served_name)
    if outcomes:
        record_serving(session, settings, row, job, outcomes,
                       f"{job.id}:serving:v{row.version}:unload")
    published_store(settings).remove(row.served_name)
    row.status, row.retired_at = Status.retired, utcnow()
    commands.retire(session, settings.topics, job, reason, row, actor)


def retire(sessions: sessionmaker[Session], settings: Settings, tenant: str | None, ref: str,
           actor: str) -> RegisteredModel:
    """Retire `NAME:VERSION` of the tenant (None: an operator, any tenant's)."""
    name, version = parse_ref(ref)
    if version is None:
        raise RegistryError(f"{ref}: name the version to retire, e.g. {name}:1")
    with sessions() as session:
        row = find(session, tenant, name, version)
        if row.status != Status.retired:
            retire_row(session, settings, row, "retired", actor)
            session.commit()
        session.refresh(row)
        session.expunge(row)
    return row
