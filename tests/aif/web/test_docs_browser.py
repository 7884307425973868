"""`/docs` in real headless Chromium (Debian's, driven by Playwright): the vendored Swagger UI
reads the app's OpenAPI 3.1 document and lists every operation, with nothing fetched from
outside the app."""

from __future__ import annotations

import shutil
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from playwright.sync_api import Route, expect, sync_playwright
from sqlalchemy.orm import Session, sessionmaker

from aif.settings import Settings
from aif.web.app import create_app
from aif.web.screenshots import serving
from events.bus import KafkaConfig
from tests.conftest import free_port

pytestmark = pytest.mark.browser

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


def test_docs_list_every_operation_offline(sessions: sessionmaker[Session],
                                           tmp_path: Path) -> None:
    if not Path(CHROMIUM).exists():
        pytest.fail("Debian's chromium is not installed (.ci/run installs it)")
    settings = Settings(home=tmp_path, kafka=KafkaConfig(
        bootstrap_servers=f"127.0.0.1:{free_port()}"))
    app = create_app(sessions, settings)
    document = app.openapi()
    assert document["openapi"].startswith("3.1")
    operations = sorted(f"{method.upper()} {path}" for path, ops in document["paths"].items()
                        for method in ops)
    outside: list[str] = []

    def only_the_app(route: Route) -> None:
        if urlsplit(route.request.url).hostname == "127.0.0.1":
            route.continue_()
        else:
            outside.append(route.request.url)
            route.abort()

    errors: list[str] = []
    with serving(app) as url, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = browser.new_page()
            page.route("**/*", only_the_app)
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(f"{url}/docs")
            blocks = page.locator(".opblock-summary")
            expect(blocks).to_have_count(len(operations), timeout=30_000)
            listed = sorted(
                f"{b.locator('.opblock-summary-method').inner_text().strip()} "
                f"{b.locator('.opblock-summary-path').get_attribute('data-path')}"
                for b in blocks.all())
            expect(page.locator(".info .title")).to_contain_text("aif-tuning")
            assert not page.locator(".errors-wrapper").is_visible()
        finally:
            browser.close()
    assert listed == operations
    assert outside == [] and errors == []
