from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from aif.db.models import Job, Score
from aif.web.app import create_app


def _seed(sessions: sessionmaker[Session]) -> None:
    with sessions() as s:
        s.add(Job(id="job-123", tenant="acme", request_source="s", request_id="1",
                  request_sha256="x", request={}, recipe_name="grid-ticket-routing",
                  recipe={"model": {"base": "smollm2-135m-instruct"}}, state="succeeded",
                  reason="", gate_passed=True, gate_reason="acc +0.5"))
        s.add(Score(job_id="job-123", task="grid_ticket_routing", metric="acc", base=0.31,
                    tuned=0.87, base_stderr=0.03, tuned_stderr=0.02, num_fewshot=0,
                    samples=200, lm_eval_version="0.4.13", task_config_sha256="abc"))
        s.commit()


def test_leaderboard_lists_model_with_delta(sessions: sessionmaker[Session]) -> None:
    _seed(sessions)
    client = TestClient(create_app(sessions))
    html = client.get("/leaderboard").text
    assert 'data-job-id="job-123"' in html
    assert "0.310" in html and "0.870" in html and "+0.560" in html
    (row,) = client.get("/api/leaderboard").json()
    assert row["delta"] == 0.87 - 0.31 and row["base_model"] == "smollm2-135m-instruct"


def test_empty_leaderboard_says_how_to_fill_it(sessions: sessionmaker[Session]) -> None:
    html = TestClient(create_app(sessions)).get("/leaderboard").text
    assert "No evaluated models yet" in html


def test_job_lookup_and_404(sessions: sessionmaker[Session]) -> None:
    _seed(sessions)
    client = TestClient(create_app(sessions))
    assert client.get("/api/jobs/job-123").json()["state"] == "succeeded"
    missing = client.get("/api/jobs/nope")
    assert missing.status_code == 404 and "nope" in missing.json()["detail"]


def test_job_preflight_report(sessions: sessionmaker[Session]) -> None:
    _seed(sessions)
    client = TestClient(create_app(sessions))
    assert client.get("/api/jobs/job-123/preflight").status_code == 404
    with sessions() as s:
        s.get_one(Job, "job-123").preflight = {"usable": False, "reason": "line 2: bad"}
        s.commit()
    assert client.get("/api/jobs/job-123/preflight").json()["reason"] == "line 2: bad"
    assert client.get("/api/jobs/nope/preflight").status_code == 404
