"""What every route of the HTTP API may depend on: the database session, the settings, the
caller's identity, and the job it names — each a named dependency, so a route states its
needs in its signature and no route can forget the tenant check.

Every error is an RFC 9457 problem-details document (`application/problem+json`). A job of
another tenant is answered exactly like one that does not exist (404), and a missing, wrong
or revoked key gets 401 without a word about the resource.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated, Any, TypeVar

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel
from sqlalchemy import ColumnElement, true
from sqlalchemy.orm import Session
from starlette.exceptions import HTTPException as StarletteHTTPException

from aif.db.models import DataFile, Job
from aif.settings import Settings
from aif.tenants import Principal, authenticate
from aif.web.kafka import RequestBus

PROBLEM_JSON = "application/problem+json"


class Problem(HTTPException):
    """An HTTP error with a problem-details body; `field` names the input at fault."""

    def __init__(self, status: int, title: str, detail: str = "", *, field: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(status, detail or title, headers)
        self.title, self.field = title, field


class ProblemPublic(BaseModel):
    """RFC 9457 problem details, as every error of the API is answered."""

    type: str = "about:blank"
    title: str
    status: int
    detail: str
    field: str | None = None
    errors: list[dict[str, str]] | None = None


def problems(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """`responses=` of a route: the problem documents it may answer with, for OpenAPI."""
    return {status: {"model": ProblemPublic, "description": _TITLES[status]}
            for status in statuses}


def _document_problems(app: FastAPI) -> None:
    """Make the OpenAPI document say what the handlers do: every error response of every
    route, FastAPI's own 422 included, is a ProblemPublic as `application/problem+json`."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        doc = generate()
        ref = {"$ref": "#/components/schemas/ProblemPublic"}
        for operation in (op for path in doc["paths"].values() for op in path.values()):
            for status, response in operation["responses"].items():
                if int(status) >= 400:
                    response["content"] = {PROBLEM_JSON: {"schema": ref}}
        schemas = doc.setdefault("components", {}).setdefault("schemas", {})
        for unused in ("HTTPValidationError", "ValidationError"):
            schemas.pop(unused, None)
        schemas["ProblemPublic"] = ProblemPublic.model_json_schema()
        app.openapi_schema = doc
        return doc

    app.openapi = openapi  # type: ignore[method-assign]


def _problem_response(status: int, title: str, detail: str, extra: dict[str, Any],
                      headers: dict[str, str] | None = None) -> JSONResponse:
    body = {"type": "about:blank", "title": title, "status": status, "detail": detail, **extra}
    return JSONResponse(body, status_code=status, media_type=PROBLEM_JSON, headers=headers)


def problem_response(exc: StarletteHTTPException) -> JSONResponse:
    """The problem document of an HTTP error (a `Problem` names its title and field)."""
    title = getattr(exc, "title", None) or _TITLES.get(exc.status_code, "Error")
    field = getattr(exc, "field", None)
    return _problem_response(exc.status_code, title, str(exc.detail),
                             {"field": field} if field else {}, exc.headers)


def install_problem_handlers(app: FastAPI) -> None:
    _document_problems(app)

    # Starlette's class, so routing errors (unknown path, wrong method) are problems too.
    @app.exception_handler(StarletteHTTPException)
    async def http_problem(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return problem_response(exc)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_: Request, exc: RequestValidationError) -> JSONResponse:
        # Name each field and rule, never echo the value sent.
        errors = [{"field": ".".join(str(p) for p in e["loc"]), "rule": e["msg"]}
                  for e in exc.errors()]
        detail = "; ".join(f"{e['field']}: {e['rule']}" for e in errors)
        return _problem_response(422, "Invalid request", detail,
                                 {"field": errors[0]["field"] if errors else None,
                                  "errors": errors})


_TITLES = {400: "Bad request", 401: "Unauthorized", 403: "Forbidden", 404: "Not found",
           409: "Conflict", 413: "Content too large", 422: "Invalid request",
           503: "Service unavailable"}


def get_session(request: Request) -> Iterator[Session]:
    with request.app.state.sessions() as session:
        yield session


def get_settings_dep(request: Request) -> Settings:
    return request.app.state.settings


def get_bus(request: Request) -> RequestBus:
    return request.app.state.bus


SessionDep = Annotated[Session, Depends(get_session)]
SettingsDep = Annotated[Settings, Depends(get_settings_dep)]
BusDep = Annotated[RequestBus, Depends(get_bus)]

UNAUTHORIZED = Problem(401, "Unauthorized", "a valid API key is needed: Authorization: Bearer "
                       "<key> (keys come from `aif tenants create`)",
                       headers={"WWW-Authenticate": 'Bearer realm="aif-tuning"'})


# Declares the scheme in the OpenAPI document; the 401 is ours, as a problem document.
_bearer = HTTPBearer(auto_error=False, description="An API key from `aif tenants create`.")


def current_principal(
    session: SessionDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal:
    principal = authenticate(session, credentials.credentials) if credentials else None
    if principal is None:
        raise UNAUTHORIZED
    return principal


CurrentTenant = Annotated[Principal, Depends(current_principal)]


Owned = TypeVar("Owned", Job, DataFile)
"""A row that belongs to one tenant."""


def tenant_scope(principal: Principal, tenant: ColumnElement[str]) -> ColumnElement[bool]:
    """The rows a caller may list: its own tenant's (staff: every tenant's)."""
    return true() if principal.staff else tenant == principal.tenant


def readable(session: Session, model: type[Owned], ident: str, principal: Principal,
             field: str) -> Owned:
    """The row the caller names; another tenant's is as absent as one that never existed
    (staff see every tenant's)."""
    row = session.get(model, ident)
    if row is None or not principal.may_read(row.tenant):
        raise Problem(404, "Not found", f"no {field.removesuffix('_id')} {ident}", field=field)
    return row


def changeable(row: Owned, principal: Principal, field: str) -> Owned:
    """A row the caller may change: staff read every tenant's but change only their own
    tenant's, so an operator's key cannot cancel, publish or delete a customer's work."""
    if row.tenant != principal.tenant:
        raise Problem(403, "Forbidden", "staff keys change only their own tenant's "
                      f"{field.removesuffix('_id')}s", field=field)
    return row


def get_job(job_id: str, principal: CurrentTenant, session: SessionDep) -> Job:
    return readable(session, Job, job_id, principal, "job_id")


JobDep = Annotated[Job, Depends(get_job)]


def get_own_job(job: JobDep, principal: CurrentTenant) -> Job:
    return changeable(job, principal, "job_id")


OwnJobDep = Annotated[Job, Depends(get_own_job)]
