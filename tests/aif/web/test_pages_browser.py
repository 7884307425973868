"""The pages in real headless Chromium (Debian's, driven by Playwright): the app on
loopback, rows made by the job store's own functions, one browser for the module.

Screenshots land in the module's temporary directory (printed with `-s`).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from aif.db.models import ApiKey, Job, WebSession
from aif.db.session import session_factory
from aif.jobstore.outbox import enqueue_event
from aif.jobstore.transitions import transition
from aif.settings import Settings
from aif.tenants import Credentials, Role, create_tenant
from aif.web.app import create_app
from aif.web.screenshots import serving
from events.bus import KafkaConfig
from events.messages import JobProgress
from events.states import JobState
from recipes import load_recipe
from tests.aif.web.test_pages import LOSSES, seed_model
from tests.conftest import free_port

pytestmark = pytest.mark.browser

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


@dataclass
class Site:
    url: str
    sessions: sessionmaker[Session]
    settings: Settings
    browser: Browser
    shots: Path
    acme: Credentials
    globex: Credentials
    jobs: dict[str, str]
    home: Path

    def page(self, creds: Credentials | None, width: int = 1280, height: int = 900) -> Page:
        page = self.browser.new_context(viewport={"width": width, "height": height}).new_page()
        if creds is not None:
            page.goto(f"{self.url}/signin?next=/leaderboard")
            page.fill("#api_key", creds.api_key)
            page.click("form.signin button")
            expect(page.locator("#signed-in-as")).to_contain_text(creds.tenant)
        return page


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    if not Path(CHROMIUM).exists():
        pytest.fail("Debian's chromium is not installed (.ci/run installs it)")
    home = tmp_path_factory.mktemp("pages")
    settings = Settings(home=home, topic_prefix="browser",
                        kafka=KafkaConfig(bootstrap_servers=f"127.0.0.1:{free_port()}"))
    sessions = session_factory(f"sqlite:///{home / 'aif.db'}")
    with sessions() as s:
        acme, globex = create_tenant(s, "acme"), create_tenant(s, "globex")
        create_tenant(s, "centre", Role.staff)
        s.commit()
    jobs = {
        "good": seed_model(sessions, settings, "acme", "a1", labels={"name": "acme-router"},
                           scores={"grid_ticket_routing": (0.30, 0.90),
                                   "general_knowledge_guard": (0.60, 0.59)}),
        "weak": seed_model(sessions, settings, "acme", "a2", labels={"name": "acme-weak"},
                           scores={"grid_ticket_routing": (0.30, 0.33),
                                   "general_knowledge_guard": (0.60, 0.60)}),
        "news": seed_model(sessions, settings, "acme", "a3", recipe="market-news-sentiment",
                           labels={"name": "acme-news"}),
        "globex": seed_model(sessions, settings, "globex", "g1",
                             labels={"name": "globex-router"}),
    }
    with serving(create_app(sessions, settings)) as url, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield Site(url, sessions, settings, browser, home / "screenshots", acme, globex, jobs,
                   home)
        browser.close()


def _names(page: Page) -> list[str]:
    return page.locator("#leaderboard tbody .model-name").all_inner_texts()


def test_leaderboard_filters_sorts_searches_and_keeps_the_view_in_the_url(site: Site) -> None:
    page = site.page(site.acme)
    assert set(_names(page)) == {"acme-router", "acme-weak", "acme-news",
                                 "smollm2-135m-instruct"}
    page.screenshot(path=site.shots / "leaderboard.png", full_page=True)

    page.select_option("#filter-sector", "energy")  # applies at once
    page.wait_for_url("**sector=energy**")
    assert "acme-news" not in _names(page) and "acme-router" in _names(page)

    page.click('a[data-sort="task:grid_ticket_routing"]')
    page.wait_for_url("**sort=task%3Agrid_ticket_routing**")
    assert _names(page)[:2] == ["acme-router", "acme-weak"]
    page.click('a[data-sort="task:grid_ticket_routing"]')  # again: the other way round
    page.wait_for_url("**dir=asc**")
    assert _names(page)[-2:] == ["acme-weak", "acme-router"]
    shared = page.url

    page.fill("#search", "weak")
    page.keyboard.press("Enter")
    page.wait_for_url("**q=weak**")
    assert _names(page) == ["acme-weak"]
    expect(page.locator("#leaderboard .delta.short")).to_have_count(1)  # +0.03 < the gate

    again = site.page(site.acme)
    again.goto(shared)
    assert again.locator("#filter-sector").input_value() == "energy"
    assert _names(again)[-2:] == ["acme-weak", "acme-router"]
    again.locator("#leaderboard details.pins summary").first.click()
    expect(again.locator("#leaderboard details.pins[open]")).to_contain_text("task sha256")


def test_compare_two_models_from_the_leaderboard(site: Site) -> None:
    page = site.page(site.acme)
    page.check(f'input[value="job:{site.jobs["good"]}"]')
    page.check(f'input[value="job:{site.jobs["weak"]}"]')
    page.click("#compare-button")
    page.wait_for_url("**/compare?**")
    cell = lambda key: page.locator(  # noqa: E731
        f'#compare-table td[data-task="grid_ticket_routing"][data-key="job:{site.jobs[key]}"]')
    expect(cell("good")).to_contain_text("0.900")
    expect(cell("weak")).to_contain_text("0.330")
    assert page.locator("#compare-table thead th").count() == 3


def test_job_page_draws_the_stored_loss_curve_and_follows_a_running_job(site: Site) -> None:
    page = site.page(site.acme)
    page.goto(f"{site.url}/jobs/{site.jobs['good']}")
    page.wait_for_function("window.aifLossChart !== undefined")
    steps, losses = page.evaluate("[window.aifLossChart.data[0], window.aifLossChart.data[1]]")
    assert steps == list(range(1, len(LOSSES) + 1)) and losses == LOSSES
    expect(page.locator("#job-state")).to_have_text("succeeded")
    assert page.locator("#timeline tbody tr").count() == 6
    page.screenshot(path=site.shots / "job.png", full_page=True)

    with site.sessions() as s:  # a job still training: its page follows the event stream
        job = s.get_one(Job, site.jobs["weak"])
        running = Job(id="running-job", tenant="acme", request_source="s", request_id="run",
                      request_sha256="x", request={"data": {}}, recipe=job.recipe,
                      recipe_name=job.recipe_name, state=None, reason="")
        s.add(running)
        for state in (JobState.validating, JobState.queued, JobState.training):
            transition(s, running, state, site.settings.topics, f"to {state}")
        s.commit()
    page.goto(f"{site.url}/jobs/running-job")
    expect(page.locator("#loss-chart")).to_contain_text("No training progress yet")
    with site.sessions() as s:
        running = s.get_one(Job, "running-job")
        for step, loss in ((1, 3.0), (2, 2.5)):
            enqueue_event(s, site.settings.topics.status, JobProgress(
                job_id=running.id, stage="training", step=step, total_steps=10, loss=loss,
                tokens_per_s=50.0), job=running)
        s.commit()
    page.wait_for_function("window.aifLossChart && window.aifLossChart.data[0].length === 2")
    assert page.evaluate("window.aifLossChart.data[1]") == [3.0, 2.5]
    expect(page.locator("#fact-steps")).to_have_text("2 / 10")


def test_a_dpo_jobs_page_draws_its_reward_curves_and_follows_them(site: Site) -> None:
    with site.sessions() as s:
        job = Job(id="dpo-job", tenant="acme", request_source="s", request_id="dpo",
                  request_sha256="x", request={"data": {}}, recipe_name="citizen-reply-de-dpo",
                  recipe=load_recipe("citizen-reply-de-dpo").model_dump(mode="json"),
                  state=None, reason="")
        s.add(job)
        for state in (JobState.validating, JobState.queued, JobState.training):
            transition(s, job, state, site.settings.topics, f"to {state}")
        enqueue_event(s, site.settings.topics.status, JobProgress(
            job_id=job.id, stage="training", step=5, total_steps=60, loss=0.69,
            reward_margin=0.02, reward_accuracy=0.5), job=job)
        s.commit()
    page = site.page(site.acme)
    page.goto(f"{site.url}/jobs/dpo-job")
    page.wait_for_function("window.aifRewardChart !== undefined")
    assert page.evaluate("window.aifRewardChart.data") == [[5], [0.02], [0.5]]
    expect(page.locator("#fact-method")).to_contain_text("dpo")
    with site.sessions() as s:
        enqueue_event(s, site.settings.topics.status, JobProgress(
            job_id="dpo-job", stage="training", step=10, total_steps=60, loss=0.5,
            reward_margin=0.3, reward_accuracy=0.75), job=s.get_one(Job, "dpo-job"))
        s.commit()
    page.wait_for_function("window.aifRewardChart.data[0].length === 2")
    assert page.evaluate("window.aifRewardChart.data") == [[5, 10], [0.02, 0.3], [0.5, 0.75]]
    expect(page.locator("#fact-reward-accuracy")).to_have_text("0.750")


def test_a_second_tenant_sees_none_of_the_first_tenants_rows(site: Site) -> None:
    page = site.page(site.globex)
    assert _names(page) == ["globex-router", "smollm2-135m-instruct"] or set(
        _names(page)) == {"globex-router", "smollm2-135m-instruct"}
    assert "acme" not in page.content()
    page.goto(f"{site.url}/jobs/{site.jobs['good']}")
    expect(page.locator("h1")).to_have_text("Not found")
    signed_out = site.page(None)
    signed_out.goto(f"{site.url}/leaderboard")
    expect(signed_out.locator("#empty")).to_be_visible()
    signed_out.screenshot(path=site.shots / "signed-out.png")


def test_the_leaderboard_fits_a_phone_and_works_by_keyboard(site: Site) -> None:
    page = site.page(site.acme, width=390, height=844)
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    page.screenshot(path=site.shots / "leaderboard-phone.png", full_page=True)
    page.focus("#search")
    page.keyboard.type("router")
    page.keyboard.press("Enter")
    page.wait_for_url("**q=router**")
    assert _names(page) == ["acme-router"]
    page.locator('a[data-sort="name"]').focus()
    page.keyboard.press("Enter")
    page.wait_for_url("**sort=name**")
    assert "q=router" in page.url


def test_the_readme_screenshot_command_leaves_no_key_behind(site: Site, tmp_path: Path) -> None:
    count = lambda model: site.sessions().scalar(select(func.count()).select_from(model))  # noqa: E731
    keys, browsers = count(ApiKey), count(WebSession)
    done = subprocess.run([sys.executable, "-m", "aif.web.screenshots", "--home",
                           str(site.home), "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    for name in ("leaderboard.png", "job.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (count(ApiKey), count(WebSession)) == (keys, browsers)
