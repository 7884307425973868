"""What every route of the HTTP API may depend on: the database session, the settings, the
caller's identity, and the job it names — each a named dependency, so a route states its
needs in its signature and no route can forget the tenant check.

Every error is an RFC 9457 problem-details document (`application/problem+json`). A job of
another tenant is answered exactly like one that does not exist (404), and a missing, wrong
or revoked key gets 401 without a word about the resource.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Annotated, Any, TypeVar

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import AfterValidator, BaseModel
from sqlalchemy import ColumnElement, true
from sqlalchemy.orm import Session
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import compile_path

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


def _in_utc(at: datetime) -> datetime:
    """SQLite reads back naive UTC; every database answers the same instant alike, with
    the offset RFC 3339 (`format: date-time`) requires."""
    return at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)


UtcDateTime = Annotated[datetime, AfterValidator(_in_utc)]
"""A stored time as the API answers it: in UTC, with its offset."""


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


_BODY_PROBLEMS = {
    400: "Bad request: the body cannot be read as its content type (JSON that is not "
         "UTF-8, or nested deeper than the parser reads)",
    413: "Content too large: the body is over `AIF_MAX_BODY_BYTES` (uploads: "
         "`AIF_MAX_UPLOAD_BYTES` or the tenant's quota), refused before it is read; a job "
         "request whose event would be over intake's 64 KiB limit",
}
"""What any operation that takes a body may answer besides its own problems."""


def _absent_not_null(schema: dict[str, Any]) -> dict[str, Any]:
    """A parameter's schema without FastAPI's `null` for `X | None`: a query parameter or a
    header is left out to mean None, and `?state=null` is the text "null", no null."""
    options = [s for s in schema.get("anyOf", []) if s != {"type": "null"}]
    if "anyOf" not in schema or len(options) != 1:
        return schema
    rest = {k: v for k, v in schema.items() if k != "anyOf"
            and not (k == "default" and v is None)}
    return options[0] | rest


def _document_problems(app: FastAPI) -> None:
    """Make the OpenAPI document say what the handlers do: every error response of every
    route, FastAPI's own 422 included, is a ProblemPublic as `application/problem+json`,
    an operation that takes a body lists the answers to one it cannot read or take, and
    an optional parameter is one that may be left out, not one that may be null."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        doc = generate()
        ref = {"$ref": "#/components/schemas/ProblemPublic"}
        for operation in (op for path in doc["paths"].values() for op in path.values()):
            for parameter in operation.get("parameters", []):
                parameter["schema"] = _absent_not_null(parameter["schema"])
            if "requestBody" in operation:
                for status, description in _BODY_PROBLEMS.items():
                    operation["responses"].setdefault(str(status), {"description": description})
                operation["responses"] = dict(sorted(operation["responses"].items()))
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
    async def http_problem(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 405:
            exc = _method_not_allowed(request, exc)
        elif exc.status_code == 400 and exc.detail == UNREADABLE_BODY:
            exc = Problem(400, "Bad request", "body: cannot be read as JSON (not UTF-8, or "
                          "nested deeper than the parser reads)", field="body")
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


UNREADABLE_BODY = "There was an error parsing the body"
"""FastAPI's detail for a JSON body its parser could not read (any exception but a syntax
error, which is a 422: a RecursionError, a UnicodeDecodeError)."""


def _method_not_allowed(request: Request, exc: StarletteHTTPException) -> Problem:
    """405 with `Allow` naming every method the OpenAPI document gives the path: Starlette
    names only those of the first route that matched, and each method is a route of its
    own. Paths outside the document keep Starlette's answer."""
    paths = request.app.openapi()["paths"]
    allowed = sorted({method.upper() for template, operations in paths.items()
                      if compile_path(template)[0].match(request.scope["path"])
                      for method in operations})
    if not allowed:
        return Problem(405, "Method not allowed", f"{request.method} is not allowed here",
                       headers=exc.headers)
    listed = ", ".join(allowed)
    return Problem(405, "Method not allowed", f"{request.method} is not allowed here; "
                   f"allowed: {listed}", headers={**(exc.headers or {}), "Allow": listed})


_TITLES = {400: "Bad request", 401: "Unauthorized", 403: "Forbidden", 404: "Not found",
           405: "Method not allowed", 409: "Conflict", 413: "Content too large",
           422: "Invalid request", 429: "Too many requests", 503: "Service unavailable"}


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
