"""FastAPI app: the HTTP API v1 (`aif.web.routes`), its offline docs, and the HTML pages
(`aif.web.pages`: sign-in, leaderboard, compare, jobs)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib.resources import files as package_files

from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles
from kafka import KafkaProducer
from sqlalchemy.orm import Session, sessionmaker

from aif.metrics import JobStoreCollector, registry
from aif.settings import Settings
from aif.web import pages
from aif.web.body_limit import BodyLimit
from aif.web.deps import install_problem_handlers
from aif.web.kafka import RequestBus
from aif.web.routes import artifacts, files, health, jobs, leaderboard, metrics, models, recipes

DESCRIPTION = """Submit, follow and compare LoRA fine-tuning jobs.

Every `/v1` route needs `Authorization: Bearer <API key>` (keys come from `aif tenants
create`). A caller sees only its own tenant's jobs (staff keys: every tenant's); another
tenant's job is answered like one that does not exist. Errors are RFC 9457 problem details
that name the field at fault. A request body over `AIF_MAX_BODY_BYTES` (256 KiB unless set;
uploads: `AIF_MAX_UPLOAD_BYTES`) is refused with 413 before it is read."""

SWAGGER_UI = package_files("fastapi_offline") / "static"
"""swagger-ui-bundle.js, swagger-ui.css and favicon.png of Swagger UI 5 (Apache-2.0)."""


def create_app(sessions: sessionmaker[Session], settings: Settings,
               producer: KafkaProducer | None = None) -> FastAPI:
    """The app; `producer` is shared with the caller (who closes it), or built on first
    use from `settings.kafka`."""
    bus = RequestBus(settings.kafka, settings.topics.requests, producer)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        bus.close()

    # The default docs load Swagger UI from a CDN; these serve it from an installed package
    # (fastapi-offline's Swagger UI 5, which reads OpenAPI 3.1: 4.x showed a blank page).
    app = FastAPI(title="aif-tuning", version="1.0.0", description=DESCRIPTION,
                  docs_url=None, redoc_url=None, lifespan=lifespan)
    app.state.sessions, app.state.settings, app.state.bus = sessions, settings, bus
    install_problem_handlers(app)
    app.state.metrics = registry(JobStoreCollector(sessions))
    for module in (jobs, artifacts, files, leaderboard, models, recipes, health, metrics):
        app.include_router(module.router)
    # Uploads stream their own body against max_upload_bytes and the tenant's quota.
    app.add_middleware(BodyLimit, limit=settings.max_body_bytes,
                       own_limit=[("POST", files.router.prefix)])
    app.mount("/docs/assets", StaticFiles(directory=str(SWAGGER_UI)), name="swagger-ui")

    @app.get("/docs", include_in_schema=False)
    def docs() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=app.openapi_url or "/openapi.json", title="aif-tuning API",
            swagger_js_url="/docs/assets/swagger-ui-bundle.js",
            swagger_css_url="/docs/assets/swagger-ui.css",
            swagger_favicon_url="/docs/assets/favicon.png")

    @app.get("/", include_in_schema=False)
    def index() -> RedirectResponse:
        return RedirectResponse("/leaderboard")

    pages.install(app)
    return app
