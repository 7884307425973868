"""Browser sessions: a person signs in once with their tenant's API key and the pages then
know them by an HttpOnly cookie that does not hold the key.

The cookie holds a random secret; the job store keeps only its sha256 and the API key it was
opened with, and every request re-reads that key, so revoking the key (or the tenant) signs
every browser of it out. POST forms carry a CSRF token derived from the session secret
(sign-out) or double-submitted from a short-lived cookie (sign-in), and the cookies are
SameSite=Strict as a second line.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from datetime import UTC, datetime, timedelta
from typing import Annotated

from fastapi import Depends, Request, Response
from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from aif.db.models import ApiKey, WebSession, utcnow
from aif.tenants import Principal, Role, authenticate
from aif.web.deps import SessionDep

COOKIE = "aif_session"
SIGNIN_COOKIE = "aif_signin"
"""Holds the sign-in form's CSRF token: no session exists yet to derive one from."""
LIFETIME = timedelta(hours=12)


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _aware(at: datetime) -> datetime:  # SQLite reads timestamps back naive (they are UTC)
    return at if at.tzinfo is not None else at.replace(tzinfo=UTC)


def open_session(session: Session, api_key: str) -> str | None:
    """A new session's cookie secret for a valid, unrevoked key; None for anything else.
    Expired sessions are swept here, where sessions are written anyway."""
    principal = authenticate(session, api_key)
    if principal is None:
        return None
    now = utcnow()
    session.execute(delete(WebSession).where(WebSession.expires_at < now))
    secret = secrets.token_urlsafe(32)
    session.add(WebSession(secret_sha256=_sha256(secret), api_key_id=principal.key_id,
                           created_at=now, expires_at=now + LIFETIME))
    session.commit()
    return secret


def close_session(session: Session, secret: str) -> None:
    session.execute(delete(WebSession).where(WebSession.secret_sha256 == _sha256(secret)))
    session.commit()


def principal_of(session: Session, secret: str | None) -> Principal | None:
    """Who the cookie signs in: None when absent, unknown, expired or its key revoked."""
    if not secret:
        return None
    row = session.execute(
        select(WebSession, ApiKey).join(ApiKey, ApiKey.id == WebSession.api_key_id)
        .where(WebSession.secret_sha256 == _sha256(secret))).first()
    if row is None:
        return None
    web, key = row
    if key.revoked_at is not None or _aware(web.expires_at) <= utcnow():
        return None
    return Principal(tenant=key.tenant, role=Role(key.role), key_id=key.id)


def viewer(request: Request, session: SessionDep) -> Principal | None:
    return principal_of(session, request.cookies.get(COOKIE))


Viewer = Annotated[Principal | None, Depends(viewer)]
"""The signed-in person of a page, or None: pages then show public rows only."""


def csrf_token(request: Request) -> str:
    """The token POST forms of a signed-in page carry: tied to the session's secret."""
    secret = request.cookies.get(COOKIE, "")
    return hmac.new(secret.encode(), b"csrf", hashlib.sha256).hexdigest()


def csrf_ok(request: Request, sent: str, expected: str) -> bool:
    return bool(sent) and bool(expected) and hmac.compare_digest(sent, expected)


def set_cookie(request: Request, response: Response, name: str, value: str,
               max_age: int) -> None:
    response.set_cookie(name, value, max_age=max_age, httponly=True, samesite="strict",
                        secure=request.url.scheme == "https", path="/")
