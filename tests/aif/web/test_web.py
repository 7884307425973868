"""The HTML leaderboard page: open to anyone, so it shows only jobs their tenant published;
and /docs, whose Swagger UI must read the OpenAPI version the app publishes."""

import re
from pathlib import Path

from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from aif.db.models import Job, Score
from aif.settings import Settings
from aif.web.app import create_app


def _seed(sessions: sessionmaker[Session], job_id: str, *, public: bool) -> None:
    with sessions() as s:
        s.add(Job(id=job_id, tenant="acme", request_source="s", request_id=job_id,
                  request_sha256="x", request={}, recipe_name="grid-ticket-routing",
                  recipe={"model": {"base": "smollm2-135m-instruct"}}, state="succeeded",
                  reason="", gate_passed=True, gate_reason="acc +0.5", public=public))
        s.add(Score(job_id=job_id, task="grid_ticket_routing", metric="acc", base=0.31,
                    tuned=0.87, base_stderr=0.03, tuned_stderr=0.02, num_fewshot=0,
                    samples=200, lm_eval_version="0.4.13", task_config_sha256="abc"))
        s.commit()


def _client(sessions: sessionmaker[Session], tmp_path: Path) -> TestClient:
    return TestClient(create_app(sessions, Settings(home=tmp_path)))


def test_leaderboard_lists_public_models_with_delta(sessions: sessionmaker[Session],
                                                    tmp_path: Path) -> None:
    _seed(sessions, "job-public", public=True)
    _seed(sessions, "job-private", public=False)
    html = _client(sessions, tmp_path).get("/leaderboard").text
    assert 'data-job-id="job-public"' in html and "job-private" not in html
    assert "0.310" in html and "0.870" in html and "+0.560" in html


def test_empty_leaderboard_says_how_to_fill_it(sessions: sessionmaker[Session],
                                               tmp_path: Path) -> None:
    _seed(sessions, "job-private", public=False)
    html = _client(sessions, tmp_path).get("/leaderboard").text
    assert "No evaluated models yet" in html


def test_the_old_unauthenticated_json_routes_are_gone(sessions: sessionmaker[Session],
                                                      tmp_path: Path) -> None:
    _seed(sessions, "job-private", public=False)
    client = _client(sessions, tmp_path)
    for url in ("/api/leaderboard", "/api/jobs/job-private", "/api/jobs/job-private/preflight"):
        answer = client.get(url)
        assert answer.status_code == 404 and "job-private" not in answer.text.replace(url, "")


def test_the_docs_serve_a_swagger_ui_that_reads_the_documents_openapi_version(
        sessions: sessionmaker[Session], tmp_path: Path) -> None:
    """Swagger UI 4 shows a blank page for OpenAPI 3.1 (FastAPI's); 5 reads it. Without a
    browser (tests/aif/web/test_docs_browser.py renders it): the bundle's own version."""
    client = _client(sessions, tmp_path)
    assert client.get("/openapi.json").json()["openapi"].startswith("3.1.")
    [bundle] = re.findall(r'src="(/docs/assets/swagger-ui-bundle\.js)"', client.get("/docs").text)
    version = re.search(r'PACKAGE_VERSION:"(\d+)\.\d+\.\d+"', client.get(bundle).text)
    assert version is not None and int(version[1]) >= 5, version
