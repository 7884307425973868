"""The HTML pages: sign-in, the leaderboard by model, compare, and the job pages.

They sit outside the OpenAPI document (HTML, not API), so each route is added to the app
itself rather than through an included router, whose routes the API tests require to be
documented. Every page reads through the one tenant rule of `aif.web.deps`.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.routing import APIRoute
from fastapi.staticfiles import StaticFiles

from aif.web.pages import job_pages, leaderboard_pages, signin

STATIC = Path(__file__).parent.parent / "static"


def install(app: FastAPI) -> None:
    app.add_exception_handler(job_pages.SignInFirst, job_pages.redirect_to_signin)
    app.add_exception_handler(job_pages.PageNotFound, job_pages.not_found_page)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    routers: tuple[APIRouter, ...] = (signin.router, leaderboard_pages.router, job_pages.router)
    for route in (r for router in routers for r in router.routes):
        assert isinstance(route, APIRoute)
        app.add_api_route(route.path, route.endpoint, methods=list(route.methods),
                          name=route.name, response_class=route.response_class,
                          include_in_schema=False)
