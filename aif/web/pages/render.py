"""Rendering a page: the templates, and what every page's frame needs (who is signed in,
the sign-out form's CSRF token)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import Request
from fastapi.responses import HTMLResponse
from fastapi.templating import Jinja2Templates

from aif.tenants import Principal
from aif.web.pages.sessions import csrf_token

TEMPLATES = Jinja2Templates(directory=Path(__file__).parent.parent / "templates")


def page(request: Request, template: str, viewer: Principal | None, status: int = 200,
         **context: Any) -> HTMLResponse:
    return TEMPLATES.TemplateResponse(
        request, template, {"viewer": viewer, "csrf": csrf_token(request) if viewer else "",
                            **context}, status_code=status)
