"""What every route of the HTTP API may depend on: the database session, the settings, the
caller's identity, and the job it names — each a named dependency, so a route states its
needs in its signature and no route can forget the tenant check.

Every error is an RFC 9457 problem-details document (`application/problem+json`). A job of
another tenant is answered exactly like one that does not exist (404), and a missing, wrong
or revoked key gets 401 without a word about the resource.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.orm import Session

from aif.db.models import Job
from aif.settings import Settings
from aif.tenants import Principal, authenticate

PROBLEM_JSON = "application/problem+json"


class Problem(HTTPException):
    """An HTTP error with a problem-details body; `field` names the input at fault."""

    def __init__(self, status: int, title: str, detail: str = "", *, field: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(status, detail or title, headers)
        self.title, self.field = title, field


def _problem_response(status: int, title: str, detail: str, extra: dict[str, Any],
                      headers: dict[str, str] | None = None) -> JSONResponse:
    body = {"type": "about:blank", "title": title, "status": status, "detail": detail, **extra}
    return JSONResponse(body, status_code=status, media_type=PROBLEM_JSON, headers=headers)


def install_problem_handlers(app: FastAPI) -> None:
    @app.exception_handler(HTTPException)
    async def http_problem(_: Request, exc: HTTPException) -> JSONResponse:
        title = getattr(exc, "title", None) or _TITLES.get(exc.status_code, "Error")
        field = getattr(exc, "field", None)
        return _problem_response(exc.status_code, title, str(exc.detail),
                                 {"field": field} if field else {}, exc.headers)

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


SessionDep = Annotated[Session, Depends(get_session)]
SettingsDep = Annotated[Settings, Depends(get_settings_dep)]

UNAUTHORIZED = Problem(401, "Unauthorized", "a valid API key is needed: Authorization: Bearer "
                       "<key> (keys come from `aif tenants create`)",
                       headers={"WWW-Authenticate": 'Bearer realm="aif-tuning"'})


def current_principal(request: Request, session: SessionDep) -> Principal:
    scheme, _, key = request.headers.get("authorization", "").partition(" ")
    principal = authenticate(session, key.strip()) if scheme.lower() == "bearer" else None
    if principal is None:
        raise UNAUTHORIZED
    return principal


CurrentTenant = Annotated[Principal, Depends(current_principal)]


def get_job(job_id: str, principal: CurrentTenant, session: SessionDep) -> Job:
    """The caller's job; another tenant's is as absent as one that never existed (staff
    see every tenant's)."""
    job = session.get(Job, job_id)
    if job is None or not (principal.staff or job.tenant == principal.tenant):
        raise Problem(404, "Not found", f"no job {job_id}", field="job_id")
    return job


JobDep = Annotated[Job, Depends(get_job)]
