"""The HTTP API v1 on the real app and database: every route refuses a missing, wrong or
revoked key, another tenant's job is as absent as an unknown one, and reads are scoped."""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from aif.db.models import Job, Score
from aif.jobstore.outbox import enqueue_event
from aif.jobstore.transitions import transition
from aif.settings import Settings
from aif.tenants import Credentials, Role, create_tenant, revoke
from aif.web import openapi
from aif.web.app import create_app
from aif.web.routes import jobs as jobs_routes
from events.bus import KafkaConfig
from events.envelope import job_id_for
from events.messages import JobProgress
from events.states import JobState
from tests.conftest import free_port

if TYPE_CHECKING:
    from httpx2 import Response  # what Starlette's TestClient answers with

S = JobState
NO_KEY_NEEDED = {("/healthz", "get"), ("/readyz", "get"), ("/metrics", "get")}
"""The only operations of the document open to anyone (probes reveal no tenant's data)."""
OUTSIDE_THE_DOCUMENT = {
    "/", "/docs", "/docs/assets", "/openapi.json", "/static",
    # HTML pages (aif.web.pages), each with its access rules in tests/aif/web/test_pages.py
    "/leaderboard", "/leaderboard.csv", "/leaderboard.json", "/compare", "/signin",
    "/signout", "/jobs", "/jobs/{job_id}", "/jobs/{job_id}/events",
    "/jobs/{job_id}/files/{path:path}"}
"""Routes not in the OpenAPI document; each is checked below or in test_pages.py on its own."""


@dataclass
class Api:
    client: TestClient
    sessions: sessionmaker[Session]
    settings: Settings
    acme: Credentials
    globex: Credentials
    staff: Credentials

    @staticmethod
    def auth(creds: Credentials) -> dict[str, str]:
        return {"Authorization": f"Bearer {creds.api_key}"}

    def get(self, creds: Credentials, url: str, headers: dict[str, str] | None = None,
            **kw: object) -> Response:
        return self.client.get(url, headers=self.auth(creds) | (headers or {}), **kw)  # type: ignore[arg-type]

    def post(self, creds: Credentials, url: str, headers: dict[str, str] | None = None,
             **kw: object) -> Response:
        return self.client.post(url, headers=self.auth(creds) | (headers or {}), **kw)  # type: ignore[arg-type]

    def store_job(self, tenant: str, states: list[JobState], request_id: str = "r1",
                  labels: dict[str, str] | None = None, recipe: str = "grid-ticket-routing",
                  ) -> str:
        """A job as intake stores it and workers move it, with its real outbox events."""
        with self.sessions() as s:
            job = Job(id=job_id_for(tenant, jobs_routes.SOURCE, request_id), tenant=tenant,
                      request_source=jobs_routes.SOURCE, request_id=request_id,
                      request_sha256="x", recipe_name=recipe, state=None, reason="",
                      request={"data": {"recipe": recipe, "labels": labels or {}}},
                      recipe={"model": {"base": "smollm2-135m-instruct"}})
            s.add(job)
            for state in states:
                transition(s, job, state, self.settings.topics, f"to {state}")
            s.commit()
            return job.id


def make_api(sessions: sessionmaker[Session], settings: Settings) -> Iterator[Api]:
    with sessions() as s:
        acme, globex = create_tenant(s, "acme"), create_tenant(s, "globex")
        staff = create_tenant(s, "centre", Role.staff)
        s.commit()
    with TestClient(create_app(sessions, settings)) as client:
        yield Api(client, sessions, settings, acme, globex, staff)


@pytest.fixture
def api(sessions: sessionmaker[Session], tmp_path: Path) -> Iterator[Api]:
    # No broker listens here: nothing in these tests may reach one by accident.
    settings = Settings(home=tmp_path, topic_prefix="api",
                        kafka=KafkaConfig(bootstrap_servers=f"127.0.0.1:{free_port()}"))
    yield from make_api(sessions, settings)


def _operations(app_doc: dict) -> list[tuple[str, str]]:
    return [(path, method) for path, ops in app_doc["paths"].items() for method in ops]


DOC = json.loads(openapi.OPENAPI_FILE.read_text())


def _url(path: str, job_id: str = "x") -> str:
    return (path.replace("{job_id}", job_id).replace("{name}", "grid-ticket-routing")
            .replace("{path}", "adapter/adapter_model.safetensors"))


def test_the_committed_openapi_document_is_the_apps() -> None:
    assert openapi.OPENAPI_FILE.read_text() == openapi.generated(), (
        "openapi.json is stale: run python -m aif.web.openapi")


def test_every_route_is_in_the_document_or_listed(api: Api) -> None:
    """A route outside the OpenAPI document would escape the key checks below."""
    app = api.client.app
    top = set()
    for route in app.routes:  # type: ignore[attr-defined]
        if hasattr(route, "original_router"):  # an included router: all its routes documented
            assert all(r.include_in_schema for r in route.original_router.routes)
        else:
            top.add(route.path)
    assert top - set(app.openapi()["paths"]) == OUTSIDE_THE_DOCUMENT  # type: ignore[attr-defined]


@pytest.mark.parametrize(("path", "method"), _operations(DOC))
def test_every_operation_refuses_a_missing_wrong_or_revoked_key(
        api: Api, path: str, method: str) -> None:
    job_id = api.store_job("acme", [S.validating])
    url = _url(path, job_id)
    call = getattr(api.client, method)
    if (path, method) in NO_KEY_NEEDED:
        assert call(url).status_code in (200, 503)
        return
    with api.sessions() as s:
        revoked = create_tenant(s, "gone")
        revoke(s, "gone")
        s.commit()
    wrong = api.acme.api_key[:-4] + "AAAA"
    for headers in ({}, {"Authorization": f"Bearer {wrong}"}, api.auth(revoked),
                    {"Authorization": api.acme.api_key}, {"Authorization": "Basic eDp5"}):
        answer = call(url, headers=headers)
        assert answer.status_code == 401, (headers, answer.text)
        assert answer.headers["content-type"] == "application/problem+json"
        assert job_id not in answer.text and "acme" not in answer.text
        assert answer.headers["www-authenticate"].startswith("Bearer")


@pytest.mark.parametrize(("path", "method"), [
    (p, m) for p, m in _operations(DOC) if p.startswith("/v1/jobs/{job_id}")])
def test_another_tenants_job_is_answered_as_an_unknown_one(
        api: Api, path: str, method: str) -> None:
    job_id = api.store_job("acme", [S.validating])
    call = getattr(api.client, method)
    theirs = call(_url(path, job_id), headers=api.auth(api.globex))
    unknown = call(_url(path, "no-such-job"), headers=api.auth(api.globex))
    assert theirs.status_code == unknown.status_code == 404
    assert theirs.json() | {"detail": ""} == unknown.json() | {"detail": ""}
    assert theirs.json()["detail"] == f"no job {job_id}"  # only what the caller sent
    assert "acme" not in theirs.text


def test_a_job_as_its_tenant_sees_it(api: Api) -> None:
    job_id = api.store_job("acme", [S.validating, S.queued], labels={"team": "grid"})
    job = api.get(api.acme, f"/v1/jobs/{job_id}").json()
    assert job["state"] == "queued" and job["labels"] == {"team": "grid"}
    assert [t["to_state"] for t in job["transitions"]] == ["validating", "queued"]
    assert api.get(api.staff, f"/v1/jobs/{job_id}").json()["id"] == job_id


def test_lists_are_scoped_filtered_and_paged(api: Api) -> None:
    mine = [api.store_job("acme", [S.validating], f"r{i}", labels={"team": "a" if i % 2 else "b"})
            for i in range(5)]
    cancelled = api.store_job("acme", [S.validating, S.cancelled], "rc")
    theirs = api.store_job("globex", [S.validating], "r0")
    ids = lambda answer: [j["id"] for j in answer.json()["data"]]  # noqa: E731

    assert set(ids(api.get(api.acme, "/v1/jobs"))) == {*mine, cancelled}
    assert ids(api.get(api.globex, "/v1/jobs")) == [theirs]
    assert set(ids(api.get(api.staff, "/v1/jobs"))) == {*mine, cancelled, theirs}
    assert ids(api.get(api.acme, "/v1/jobs", params={"state": "cancelled"})) == [cancelled]
    assert set(ids(api.get(api.acme, "/v1/jobs", params={"label": "team=a"}))) == {
        mine[1], mine[3]}
    assert ids(api.get(api.acme, "/v1/jobs", params={"label": ["team=a", "team=b"]})) == []
    assert ids(api.get(api.globex, "/v1/jobs", params={"label": "team=a"})) == []
    assert ids(api.get(api.acme, "/v1/jobs", params={"recipe": "other"})) == []

    seen, cursor = [], None
    while True:
        page = api.get(api.acme, "/v1/jobs", params={"limit": 2} | (
            {"cursor": cursor} if cursor else {})).json()
        seen += [j["id"] for j in page["data"]]
        if (cursor := page["next_cursor"]) is None:
            break
    assert sorted(seen) == sorted({*mine, cancelled}) and len(seen) == 6

    for params, field in (({"label": "no-equals"}, "query.label.0"),
                          ({"label": "=x"}, "query.label.0"),
                          ({"cursor": "garbage"}, "cursor"),
                          ({"limit": 0}, "query.limit"), ({"state": "nope"}, "query.state")):
        answer = api.get(api.acme, "/v1/jobs", params=params)
        assert answer.status_code == 422 and answer.json()["field"] == field, answer.text


def _score(sessions: sessionmaker[Session], job_id: str) -> None:
    with sessions() as s:
        job = s.get_one(Job, job_id)
        job.gate_passed, job.gate_reason = True, "acc +0.56"
        job.preflight = {"usable": True, "examples": ["SECRET training row"]}
        s.add(Score(job_id=job_id, task="grid_ticket_routing", metric="acc", base=0.31,
                    tuned=0.87, base_stderr=0.03, tuned_stderr=0.02, num_fewshot=0,
                    samples=200, lm_eval_version="0.4.13", task_config_sha256="abc"))
        s.commit()


def test_leaderboard_shows_other_tenants_only_what_they_published(api: Api) -> None:
    job_id = api.store_job("acme", [S.validating, S.queued, S.training, S.evaluating,
                                    S.handing_off, S.succeeded])
    _score(api.sessions, job_id)
    rows = lambda creds, **p: api.get(creds, "/v1/leaderboard", params=p).json()["data"]  # noqa: E731
    assert [r["job_id"] for r in rows(api.acme)] == [job_id]
    assert rows(api.globex) == [] and api.get(api.globex, "/v1/jobs").json()["data"] == []
    assert api.client.get("/leaderboard").text.count("data-job-id") == 0
    assert [r["job_id"] for r in rows(api.staff)] == [job_id]

    assert api.post(api.globex, f"/v1/jobs/{job_id}/publish").status_code == 404
    assert api.post(api.staff, f"/v1/jobs/{job_id}/publish").status_code == 403
    assert api.post(api.acme, f"/v1/jobs/{job_id}/publish").json()["public"] is True

    (row,) = rows(api.globex)
    assert row["tuned"] == 0.87 and row["gate_reason"] == "acc +0.56" and row["public"]
    assert "SECRET" not in json.dumps(rows(api.globex))
    assert api.get(api.globex, f"/v1/jobs/{job_id}").status_code == 404  # scores only
    assert api.get(api.globex, f"/v1/jobs/{job_id}/preflight").status_code == 404
    assert api.get(api.globex, "/v1/jobs").json()["data"] == []
    assert f'data-job-id="{job_id}"' in api.client.get("/leaderboard").text
    assert rows(api.globex, task="other") == [] and rows(api.globex, gate_passed=False) == []
    assert len(rows(api.globex, recipe="grid-ticket-routing", gate_passed=True,
                    base_model="smollm2-135m-instruct")) == 1
    assert rows(api.globex, base_model="other") == []


def test_preflight_report_of_ones_own_job(api: Api) -> None:
    job_id = api.store_job("acme", [S.validating])
    answer = api.get(api.acme, f"/v1/jobs/{job_id}/preflight")
    assert answer.status_code == 404 and "no pre-flight report yet" in answer.json()["detail"]
    _score(api.sessions, job_id)
    assert api.get(api.acme, f"/v1/jobs/{job_id}/preflight").json()["usable"] is True


def test_cancel_goes_through_the_state_machine(api: Api) -> None:
    job_id = api.store_job("acme", [S.validating, S.queued])
    answer = api.post(api.acme, f"/v1/jobs/{job_id}/cancel", json={"reason": "wrong data"})
    assert answer.status_code == 200 and answer.json()["state"] == "cancelled"
    job = api.get(api.acme, f"/v1/jobs/{job_id}").json()
    assert job["transitions"][-1] == job["transitions"][-1] | {
        "from_state": "queued", "to_state": "cancelled", "reason": "wrong data"}
    again = api.post(api.acme, f"/v1/jobs/{job_id}/cancel")
    assert again.status_code == 409 and again.json()["field"] == "job_id"
    assert "cancelled" in again.json()["detail"]
    done = api.store_job("acme", [S.validating, S.rejected], "r2")
    assert api.post(api.acme, f"/v1/jobs/{done}/cancel").status_code == 409
    other = api.store_job("acme", [S.validating], "r3")
    assert api.post(api.staff, f"/v1/jobs/{other}/cancel").status_code == 403
    assert api.get(api.acme, f"/v1/jobs/{other}").json()["state"] == "validating"


def _sse(text: str) -> list[tuple[int, dict]]:
    """(id, CloudEvent) of every event of a stream."""
    return [(int(m[1]), json.loads(m[2]))
            for m in re.finditer(r"^id: (\d+)\ndata: (.*)\n\n", text, re.MULTILINE)]


def test_events_stream_ends_after_the_final_status_and_resumes(api: Api) -> None:
    job_id = api.store_job("acme", [S.validating, S.queued, S.training, S.failed])
    answer = api.get(api.acme, f"/v1/jobs/{job_id}/events")
    assert answer.headers["content-type"].startswith("text/event-stream")
    events = _sse(answer.text)
    assert [e["data"]["state"] for _, e in events] == ["validating", "queued", "training",
                                                      "failed"]
    assert all(e["subject"] == job_id for _, e in events)
    resumed = api.get(api.acme, f"/v1/jobs/{job_id}/events",
                      headers={"Last-Event-ID": str(events[1][0])})
    assert _sse(resumed.text) == events[2:]
    past_the_end = api.client.get(f"/v1/jobs/{job_id}/events", headers={
        "Last-Event-ID": str(events[-1][0])} | api.auth(api.acme))
    assert past_the_end.status_code == 200 and _sse(past_the_end.text) == []
    bad = api.client.get(f"/v1/jobs/{job_id}/events",
                         headers={"Last-Event-ID": "x"} | api.auth(api.acme))
    assert bad.status_code == 422 and bad.json()["field"] == "header.last-event-id"


def test_events_stream_follows_a_live_job_with_keepalives(
        api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(jobs_routes, "POLL_S", 0.05)
    monkeypatch.setattr(jobs_routes, "KEEPALIVE_S", 0.2)
    job_id = api.store_job("acme", [S.validating, S.queued, S.training])

    def work() -> None:
        time.sleep(0.6)
        with api.sessions() as s:
            job = s.get_one(Job, job_id)
            enqueue_event(s, api.settings.topics.status, JobProgress(
                job_id=job_id, stage="training", step=1, total_steps=2), job=job)
            s.commit()
            time.sleep(0.3)
            transition(s, job, S.cancelled, api.settings.topics, "stop")
            s.commit()

    worker = threading.Thread(target=work)
    worker.start()
    with api.client.stream("GET", f"/v1/jobs/{job_id}/events", headers={
            "Last-Event-ID": "0"} | api.auth(api.acme)) as stream:
        text = "".join(stream.iter_text())
    worker.join()
    types = [e["type"].rsplit(".", 2)[1] for _, e in _sse(text)]
    assert types == ["status", "status", "status", "progress", "status"]
    assert ": keep-alive\n\n" in text


def test_recipes_with_did_you_mean(api: Api) -> None:
    names = [r["name"] for r in api.get(api.acme, "/v1/recipes").json()["data"]]
    assert "grid-ticket-routing" in names
    recipe = api.get(api.acme, "/v1/recipes/grid-ticket-routing").json()
    assert recipe["name"] == "grid-ticket-routing" and recipe["gate"]["task"]
    missing = api.get(api.acme, "/v1/recipes/grid-ticket-routin")
    assert missing.status_code == 404 and missing.json()["field"] == "name"
    assert "Did you mean 'grid-ticket-routing'?" in missing.json()["detail"]


def test_probes_and_offline_docs(api: Api) -> None:
    assert api.client.get("/healthz").json() == {"status": "ok"}
    ready = api.client.get("/readyz")  # the database answers, no broker does
    assert ready.status_code == 503 and ready.json()["detail"].startswith("broker unreachable")
    page = api.client.get("/docs").text
    assets = re.findall(r'(?:src|href)="(/docs/assets/[^"]+)"', page)
    assert len(assets) == 3 and "cdn" not in page.lower()
    assert all(api.client.get(a).status_code == 200 for a in assets)


def test_submit_without_a_broker_is_a_503_problem(api: Api) -> None:
    answer = api.post(api.acme, "/v1/jobs", json={"recipe": "grid-ticket-routing"})
    assert answer.status_code == 503 and answer.json()["status"] == 503
    assert "not submitted" in answer.json()["detail"]


def test_an_invalid_request_names_the_field(api: Api) -> None:
    for body, field in (({"recipe": "grid-ticket-routing", "nope": 1}, "body.nope"),
                        ({"recipe": "Bad Name"}, "body.recipe"), ({}, "body"),
                        ({"recipe": "x", "callback_url": "http://x"}, "body")):
        answer = api.post(api.acme, "/v1/jobs", json=body)
        assert answer.status_code == 422 and answer.json()["field"] == field, answer.text
    answer = api.client.post("/v1/jobs", json={"recipe": "grid-ticket-routing"},
                             headers={"Idempotency-Key": "has space"} | api.auth(api.acme))
    assert answer.status_code == 422 and answer.json()["field"] == "header.idempotency-key"
