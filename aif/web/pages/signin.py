"""Sign-in with a tenant's API key, and sign-out."""

from __future__ import annotations

import secrets
from typing import Annotated

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from aif.web.deps import SessionDep
from aif.web.pages import sessions
from aif.web.pages.render import page
from aif.web.pages.sessions import COOKIE, LIFETIME, SIGNIN_COOKIE, Viewer

router = APIRouter()
SIGNIN_TTL_S = 600


def local_path(target: str) -> str:
    """Where to go after signing in: a path of this site only (no open redirect)."""
    return target if target.startswith("/") and not target.startswith(("//", "/\\")) else "/"


def _form(request: Request, next_path: str, error: str = "", status: int = 200) -> Response:
    token = secrets.token_urlsafe(24)
    response = page(request, "signin.html", None, status, csrf_signin=token,
                    next=local_path(next_path), error=error)
    sessions.set_cookie(request, response, SIGNIN_COOKIE, token, SIGNIN_TTL_S)
    return response


@router.get("/signin", response_class=HTMLResponse)
def signin_form(request: Request, viewer: Viewer, next: str = "/") -> Response:
    if viewer is not None:
        return RedirectResponse(local_path(next), status_code=303)
    return _form(request, next)


@router.post("/signin", response_class=HTMLResponse)
def signin(request: Request, session: SessionDep, api_key: Annotated[str, Form()] = "",
           csrf: Annotated[str, Form()] = "", next: Annotated[str, Form()] = "/",
           ) -> Response:
    if not sessions.csrf_ok(request, csrf, request.cookies.get(SIGNIN_COOKIE, "")):
        return _form(request, next, "The form expired; please sign in again.", 403)
    secret = sessions.open_session(session, api_key.strip())
    if secret is None:  # never echo the key back
        return _form(request, next, "That API key is not valid or was revoked.", 401)
    response = RedirectResponse(local_path(next), status_code=303)
    sessions.set_cookie(request, response, COOKIE, secret, int(LIFETIME.total_seconds()))
    response.delete_cookie(SIGNIN_COOKIE, path="/")
    return response


@router.post("/signout", response_class=HTMLResponse)
def signout(request: Request, session: SessionDep, csrf: Annotated[str, Form()] = "",
            ) -> Response:
    secret = request.cookies.get(COOKIE)
    if secret and not sessions.csrf_ok(request, csrf, sessions.csrf_token(request)):
        return HTMLResponse("Sign-out needs the form's token; go back and try again.", 403)
    if secret:
        sessions.close_session(session, secret)
    response = RedirectResponse("/leaderboard", status_code=303)
    response.delete_cookie(COOKIE, path="/")
    return response
