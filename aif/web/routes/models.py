"""The model registry over HTTP: a tenant's handed-off model versions, and retiring one.

A model's name is `<tenant>/<label>`, so its routes name the tenant; another tenant's model
is answered like one that does not exist (404), and staff read every tenant's but retire
only their own tenant's (403).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path
from pydantic import BaseModel, ConfigDict
from sqlalchemy import select

from aif import audit, registry
from aif.artifact_stores import ArtifactStoreError
from aif.db.models import RegisteredModel
from aif.web.deps import (
    CurrentTenant,
    Problem,
    SessionDep,
    SettingsDep,
    UtcDateTime,
    problems,
    tenant_scope,
)

router = APIRouter(prefix="/v1/models", tags=["models"], responses=problems(401))


class ModelPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    name: str
    version: int
    tenant: str
    served_name: str
    status: str
    job_id: str
    base_model: str
    base_revision: str
    adapter_uri: str
    files_sha256: dict[str, str]
    merged_uri: str | None
    merged_files_sha256: dict[str, str]
    adapter: dict[str, Any]
    scores: list[dict[str, Any]]
    gate_reason: str
    serving: dict[str, str]
    created_at: UtcDateTime
    retired_at: UtcDateTime | None


class ModelsPublic(BaseModel):
    data: list[ModelPublic]


@router.get("")
def list_models(principal: CurrentTenant, session: SessionDep) -> ModelsPublic:
    """The caller's model versions by name and version (staff: every tenant's)."""
    query = (select(RegisteredModel).where(tenant_scope(principal, RegisteredModel.tenant))
             .order_by(RegisteredModel.name, RegisteredModel.version))
    return ModelsPublic(data=[ModelPublic.model_validate(m) for m in session.scalars(query)])


Segment = Annotated[str, Path(pattern=r"^[a-z0-9][a-z0-9-]{0,62}$")]


def get_model(tenant: Segment, label: Segment, version: Annotated[int, Path(ge=1)],
              principal: CurrentTenant, session: SessionDep) -> RegisteredModel:
    name = f"{tenant}/{label}"
    if not principal.may_read(tenant):
        raise Problem(404, "Not found", f"no model {name}:{version}", field="version")
    try:
        return registry.find(session, tenant, name, version)
    except registry.RegistryError as exc:
        raise Problem(404, "Not found", str(exc), field="version") from exc


ModelDep = Annotated[RegisteredModel, Depends(get_model)]


@router.get("/{tenant}/{label}/versions/{version}", responses=problems(404, 422))
def read_model(model: ModelDep) -> ModelPublic:
    return ModelPublic.model_validate(model)


@router.post("/{tenant}/{label}/versions/{version}/retire",
             responses=problems(403, 404, 422, 503))
def retire_model(model: ModelDep, principal: CurrentTenant, session: SessionDep,
                 settings: SettingsDep) -> ModelPublic:
    """Unload it from every endpoint, remove its published files and announce
    `model.retired`; retiring a retired version changes nothing."""
    if model.tenant != principal.tenant:
        raise Problem(403, "Forbidden", "staff keys retire only their own tenant's models",
                      field="version")
    if model.status != registry.Status.retired:
        try:
            registry.retire_row(session, settings, model, "retired",
                                audit.api_actor(principal.key_id))
        except ArtifactStoreError as exc:
            raise Problem(503, "Service unavailable", str(exc), field="version") from exc
        session.commit()
    return ModelPublic.model_validate(model)
