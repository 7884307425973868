"""Screenshots of the leaderboard and of a job page from a real job store, for the README:
`python -m aif.web.screenshots --home .aif` after `make demo`.

It serves the pages from the store on a free loopback port, signs a headless Chromium in
with a temporary API key of the newest evaluated job's tenant (deleted again at the end,
which ends its session), and saves `leaderboard.png` and `job.png`. Needs Playwright (the
`dev` extra) and Debian's chromium.
"""

from __future__ import annotations

import argparse
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import uvicorn
from fastapi import FastAPI
from sqlalchemy import delete, select

from aif.db.models import ApiKey, Job, WebSession
from aif.db.session import session_factory
from aif.settings import Settings
from aif.tenants import add_api_key
from aif.web.app import create_app


@contextmanager
def serving(app: FastAPI) -> Iterator[str]:
    """The app on a free loopback port in a thread, for a browser to visit; its URL."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port,
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        while not server.started:
            if not thread.is_alive():
                raise RuntimeError(f"the app did not start on 127.0.0.1:{port}")
            time.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


def main(argv: list[str] | None = None) -> int:
    from playwright.sync_api import sync_playwright

    parser = argparse.ArgumentParser(prog="python -m aif.web.screenshots", description=__doc__)
    parser.add_argument("--home", type=Path, default=Path(".aif"))
    parser.add_argument("--out", type=Path, default=Path("docs/img"))
    parser.add_argument("--chromium", default=shutil.which("chromium") or "/usr/bin/chromium")
    args = parser.parse_args(argv)
    settings = Settings(home=args.home)
    sessions = session_factory(settings.db_url)
    with sessions() as s:
        job = s.scalars(select(Job).where(Job.scores.any()).order_by(
            Job.updated_at.desc()).limit(1)).first() or s.scalars(
            select(Job).order_by(Job.updated_at.desc()).limit(1)).first()
        if job is None:
            parser.error(f"no job in {settings.db_url}: run `make demo` first")
        job_id, tenant = job.id, job.tenant
        key_id, key = add_api_key(s, tenant)
        s.commit()
    args.out.mkdir(parents=True, exist_ok=True)
    try:
        with serving(create_app(sessions, settings)) as url, sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=args.chromium, args=["--no-sandbox"])
            page = browser.new_context(viewport={"width": 1280, "height": 800}).new_page()
            page.goto(f"{url}/signin")
            page.fill("#api_key", key)
            page.click("form.signin button")
            page.wait_for_selector("#signed-in-as")
            page.goto(f"{url}/leaderboard")
            page.locator("details.pins summary").first.click()  # show the first row's pins
            page.screenshot(path=args.out / "leaderboard.png", full_page=True)
            page.goto(f"{url}/jobs/{job_id}")
            page.wait_for_function("window.aifLossChart !== undefined || "
                                   "document.querySelector('#loss-chart').textContent !== ''")
            page.screenshot(path=args.out / "job.png", full_page=True)
            browser.close()
    finally:
        with sessions() as s:  # the temporary key and its browser session leave no trace
            s.execute(delete(WebSession).where(WebSession.api_key_id == key_id))
            s.execute(delete(ApiKey).where(ApiKey.id == key_id))
            s.commit()
    print(f"wrote {args.out / 'leaderboard.png'} and {args.out / 'job.png'} (job {job_id})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
