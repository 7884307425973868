"""The HTML pages on the real app and database: sign-in sessions (cookie without the key,
revocation, CSRF), the tenant rule on every page and export, the leaderboard's filters,
sort, search and pins, the compare view's per-sample agreement, and the job page.

Rows are made by the job store's own functions (`transition`, `record_evaluation`,
`enqueue_event`), so the pages read what a real run stores; `tests/aif/web/test_pages_browser.py`
drives the same pages in Chromium.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from aif.db.models import Job, WebSession
from aif.jobstore.outbox import enqueue_event
from aif.jobstore.transitions import transition
from aif.orchestrator.scores import record_evaluation
from aif.settings import Settings
from aif.tenants import Credentials, revoke
from aif.web.pages.sessions import COOKIE
from aif.web.routes import jobs as jobs_routes
from events.bus import KafkaConfig
from events.envelope import job_id_for
from events.messages import JobProgress
from events.states import JobState
from recipes import load_recipe
from stagefiles.jobspec import (
    EVAL_COMMANDS,
    TRAINING_RESULT,
    ClassStats,
    DocOutcomes,
    EvaluationResult,
    TaskMetric,
    TrainingResult,
)
from stagefiles.preflight_report import Picked, PreflightReport, RenderedExample, SplitReport
from tests.aif.web.test_api_jobs import Api, make_api
from tests.conftest import free_port

S = JobState
LOSSES = [2.9, 2.4, 1.8, 1.5, 1.1]


def seed_model(sessions: sessionmaker[Session], settings: Settings, tenant: str,
               request_id: str, *, recipe: str = "grid-ticket-routing",
               scores: dict[str, tuple[float, float]] | None = None, labels: dict[str, str]
               | None = None, public: bool = False, work_dir: Path | None = None,
               losses: list[float] = LOSSES, rewards: list[tuple[float, float]] | None = None,
               classes: dict[str, tuple[ClassStats, ClassStats]] | None = None,
               per_doc: dict[str, tuple[DocOutcomes, DocOutcomes]] | None = None) -> str:
    """A job moved through every state as the worker does: progress events while training,
    then the evaluation recorded and gated by `record_evaluation`. `scores` is task ->
    (base, tuned) of `acc`; tasks the recipe does not name are scored too; `classes` and
    `per_doc` are task -> (base, tuned) class figures and per-document outcomes, as the
    evaluation stage reports them; `rewards` the (reward margin, reward accuracy) of each
    progress event, as a dpo or orpo run reports them."""
    frozen = load_recipe(recipe)
    scores = scores or {t.name: (0.3, 0.8) for t in frozen.eval.tasks}
    with sessions() as s:
        job = Job(id=job_id_for(tenant, jobs_routes.SOURCE, request_id), tenant=tenant,
                  request_source=jobs_routes.SOURCE, request_id=request_id,
                  request_sha256="x", recipe_name=recipe, state=None, reason="",
                  request={"data": {"recipe": recipe, "labels": labels or {}}},
                  recipe=frozen.model_dump(mode="json"), public=public,
                  work_dir=str(work_dir) if work_dir else None)
        s.add(job)
        for state in (S.validating, S.queued, S.training):
            transition(s, job, state, settings.topics, f"to {state}")
        for step, loss in enumerate(losses, start=1):
            margin, accuracy = rewards[step - 1] if rewards else (None, None)
            enqueue_event(s, settings.topics.status, JobProgress(
                job_id=job.id, stage="training", step=step, total_steps=len(losses),
                loss=loss, tokens_per_s=100.0 + step, reward_margin=margin,
                reward_accuracy=accuracy), job=job)
        transition(s, job, S.evaluating, settings.topics, "trained")
        metric = lambda task, value, run: TaskMetric(  # noqa: E731
            task=task, metric="acc", value=value, stderr=0.02, num_fewshot=0, samples=200,
            classes=(classes or {}).get(task, (None, None))[run],
            per_doc=(per_doc or {}).get(task, (None, None))[run])
        result = EvaluationResult(
            base=[metric(t, b, 0) for t, (b, _) in scores.items()],
            tuned=[metric(t, u, 1) for t, (_, u) in scores.items()],
            lm_eval_version="0.4.13", task_config_sha256={t: "ab" * 32 for t in scores},
            wall_s=1.0)
        decision = record_evaluation(s, job, frozen, result, settings.topics)
        if decision.passed:
            transition(s, job, S.handing_off, settings.topics, decision.reason)
            transition(s, job, S.succeeded, settings.topics, "model handed off")
        else:
            transition(s, job, S.rejected, settings.topics, decision.reason)
        s.commit()
        return job.id


def sign_in(client: TestClient, creds: Credentials) -> None:
    form = client.get("/signin").text
    token = re.search(r'name="csrf" value="([^"]+)"', form)[1]  # type: ignore[index]
    answer = client.post("/signin", data={"api_key": creds.api_key, "csrf": token,
                                          "next": "/leaderboard"}, follow_redirects=False)
    assert answer.status_code == 303, answer.text


@pytest.fixture
def api(sessions: sessionmaker[Session], tmp_path: Path) -> Iterator[Api]:
    settings = Settings(home=tmp_path, topic_prefix="pages",
                        kafka=KafkaConfig(bootstrap_servers=f"127.0.0.1:{free_port()}"))
    yield from make_api(sessions, settings)


def _browser(api: Api, creds: Credentials | None = None, base_url: str = "http://testserver"
             ) -> TestClient:
    client = TestClient(api.client.app, base_url=base_url)
    if creds is not None:
        sign_in(client, creds)
    return client


def _rows(html: str) -> list[str]:
    return re.findall(r'<tr data-key="([^"]+)"', html)


def test_sign_in_sets_a_strict_http_only_cookie_without_the_key(api: Api) -> None:
    client = TestClient(api.client.app, base_url="https://testserver")
    form = client.get("/signin?next=/jobs")
    token = re.search(r'name="csrf" value="([^"]+)"', form.text)[1]  # type: ignore[index]
    answer = client.post("/signin", data={"api_key": api.acme.api_key, "csrf": token,
                                          "next": "/jobs"}, follow_redirects=False)
    assert answer.status_code == 303 and answer.headers["location"] == "/jobs"
    cookie = next(c for c in answer.headers.get_list("set-cookie") if c.startswith(COOKIE))
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Secure" in cookie
    secret = cookie.split(";")[0].split("=", 1)[1]
    assert api.acme.api_key not in cookie and api.acme.api_key_id not in secret
    with api.sessions() as s:  # only a hash of the cookie is stored
        (row,) = s.scalars(select(WebSession)).all()
        assert row.secret_sha256 != secret and row.api_key_id == api.acme.api_key_id
    assert 'id="signed-in-as">acme' in client.get("/jobs").text
    plain = _browser(api)  # plain http on loopback: a Secure cookie would never come back
    sign_in(plain, api.acme)
    assert not next(c for c in plain.cookies.jar if c.name == COOKIE).secure


def test_sign_in_refuses_a_bad_key_a_missing_token_and_foreign_redirects(api: Api) -> None:
    client = _browser(api)
    form = client.get("/signin").text
    token = re.search(r'name="csrf" value="([^"]+)"', form)[1]  # type: ignore[index]
    wrong = api.acme.api_key[:-4] + "AAAA"
    answer = client.post("/signin", data={"api_key": wrong, "csrf": token})
    assert answer.status_code == 401 and "not valid or was revoked" in answer.text
    assert wrong not in answer.text and COOKIE not in client.cookies
    fresh = _browser(api)  # no sign-in cookie: a cross-site form post
    answer = fresh.post("/signin", data={"api_key": api.acme.api_key, "csrf": "forged"})
    assert answer.status_code == 403 and COOKIE not in fresh.cookies
    token = re.search(r'name="csrf" value="([^"]+)"', client.get("/signin").text)[1]  # type: ignore[index]
    answer = client.post("/signin", data={"api_key": api.acme.api_key, "csrf": token,
                                          "next": "//evil.example/x"}, follow_redirects=False)
    assert answer.headers["location"] == "/"


def test_sign_out_needs_the_csrf_token_and_ends_the_session(api: Api) -> None:
    client = _browser(api, api.acme)
    assert client.post("/signout", data={"csrf": "forged"}).status_code == 403
    assert 'id="signed-in-as"' in client.get("/leaderboard").text
    page = client.get("/leaderboard").text
    token = re.search(r'name="csrf" value="([^"]+)"', page)[1]  # type: ignore[index]
    secret = client.cookies[COOKIE]
    assert client.post("/signout", data={"csrf": token}, follow_redirects=False
                       ).status_code == 303
    with api.sessions() as s:
        assert s.scalars(select(WebSession)).all() == []
    client.cookies.set(COOKIE, secret)  # a copied cookie is worth nothing after sign-out
    assert 'id="signed-in-as"' not in client.get("/leaderboard").text


def test_revoking_the_key_signs_its_browsers_out(api: Api) -> None:
    client = _browser(api, api.acme)
    assert client.get("/jobs").status_code == 200
    with api.sessions() as s:
        revoke(s, "acme")
        s.commit()
    answer = client.get("/jobs", follow_redirects=False)
    assert answer.status_code == 303 and answer.headers["location"] == "/signin?next=/jobs"


def test_each_browser_sees_its_tenants_rows_and_the_public_ones(api: Api) -> None:
    s, st = api.sessions, api.settings
    mine = seed_model(s, st, "acme", "a1", labels={"name": "acme-router"})
    public = seed_model(s, st, "globex", "g1", labels={"name": "globex-public"}, public=True)
    private = seed_model(s, st, "globex", "g2", labels={"name": "globex-secret"})
    keys = lambda client: set(_rows(client.get("/leaderboard").text))  # noqa: E731
    base = "base:smollm2-135m-instruct"
    assert keys(_browser(api)) == {f"job:{public}", base}
    assert keys(_browser(api, api.acme)) == {f"job:{mine}", f"job:{public}", base}
    assert keys(_browser(api, api.globex)) == {f"job:{public}", f"job:{private}", base}
    staff = _browser(api, api.staff)
    assert keys(staff) == {f"job:{mine}", f"job:{public}", f"job:{private}", base}
    assert "globex-secret" not in _browser(api, api.acme).get("/leaderboard").text
    assert set(_rows(staff.get("/leaderboard?tenant=acme").text)) == {f"job:{mine}", base}
    # the tenant filter is staff's: for a tenant it changes nothing
    assert keys(_browser(api, api.acme)) == set(_rows(
        _browser(api, api.acme).get("/leaderboard?tenant=globex").text))
    for client in (_browser(api), _browser(api, api.acme)):
        exported = client.get("/leaderboard.json").json()
        assert "globex-secret" not in json.dumps(exported)
        assert "globex-secret" not in client.get("/leaderboard.csv").text
        assert "tenant" not in exported["rows"][0]
    assert {r["tenant"] for r in staff.get("/leaderboard.json").json()["rows"]} == {
        "acme", "globex", ""}


def test_filters_sort_search_and_pins(api: Api) -> None:
    s, st = api.sessions, api.settings
    good = seed_model(s, st, "acme", "a1", labels={"name": "router-good"},
                      scores={"grid_ticket_routing": (0.30, 0.90),
                              "general_knowledge_guard": (0.60, 0.58)})
    weak = seed_model(s, st, "acme", "a2", labels={"name": "router-weak"},
                      scores={"grid_ticket_routing": (0.30, 0.32),
                              "general_knowledge_guard": (0.60, 0.40)})
    news = seed_model(s, st, "acme", "a3", recipe="market-news-sentiment",
                      scores={"market_news_sentiment": (0.5, 0.7),
                              "general_knowledge_guard": (0.6, 0.6)})
    client = _browser(api, api.acme)
    get = lambda url: _rows(client.get(url).text)  # noqa: E731
    assert set(get("/leaderboard?gate=passed")) == {f"job:{good}", f"job:{news}"}
    assert get("/leaderboard?gate=failed") == [f"job:{weak}"]
    assert get("/leaderboard?sector=finance")[0] == f"job:{news}"
    assert f"job:{news}" not in get("/leaderboard?task=grid_ticket_routing")
    assert get("/leaderboard?sort=task:grid_ticket_routing&dir=desc")[:2] == [
        f"job:{good}", f"job:{weak}"]
    assert get("/leaderboard?sort=task:grid_ticket_routing&dir=asc")[:3] == [
        "base:smollm2-135m-instruct", f"job:{weak}", f"job:{good}"]
    assert get("/leaderboard?q=WEAK") == [f"job:{weak}"]
    assert get("/leaderboard?q=market-news")[0] == f"job:{news}"
    assert get("/leaderboard?sort=nonsense&gate=maybe")  # a bad view falls back, no error
    html = client.get("/leaderboard?q=router-weak").text
    assert 'class="delta short"' in html and 'class="delta regressed"' in html  # vs the gate
    assert "task sha256 <code>" + "ab" * 32 in html and "lm-eval <code>0.4.13" in html
    assert "batch size</dt><dd><code>32" in html and "seed</dt><dd><code>1234" in html
    assert "lm_eval command</dt><dd><code>not recorded" in html
    rows = list(csv.DictReader(io.StringIO(client.get(
        "/leaderboard.csv?sort=task:grid_ticket_routing&task=grid_ticket_routing").text)))
    assert [r["model"] for r in rows] == ["router-good", "router-weak", "smollm2-135m-instruct"]
    assert float(rows[0]["grid_ticket_routing:delta"]) == pytest.approx(0.6)
    assert client.get("/leaderboard.json?q=weak").json()["view"] == {"q": "weak"}


def test_leaderboard_shows_macro_f1_majority_and_why_a_collapsed_model_failed(api: Api
                                                                              ) -> None:
    spread = lambda recall, predicted, f1: ClassStats(  # noqa: E731
        documents=200, majority=0.6, majority_stderr=0.035, majority_class="neutral",
        chance=1 / 3, macro_f1=f1, recall=recall, predicted=predicted)
    base = spread({"bearish": 0.4, "bullish": 0.3, "neutral": 0.2},
                  {"bearish": 80, "bullish": 70, "neutral": 50}, 0.25)
    collapsed = spread({"bearish": 0.0, "bullish": 0.0, "neutral": 1.0}, {"neutral": 200}, 0.25)
    job = seed_model(api.sessions, api.settings, "acme", "c1", recipe="market-news-sentiment",
                     scores={"market_news_sentiment": (0.2, 0.6),
                             "general_knowledge_guard": (0.6, 0.6)},
                     classes={"market_news_sentiment": (base, collapsed)})
    html = _browser(api, api.acme).get("/leaderboard").text
    assert "F1 0.250 · majority 0.600" in html
    assert "bearish 0.000, bullish 0.000, neutral 1.000" in html
    assert "collapsed onto one class: it answers &#39;neutral&#39; for 100% of 200" in html
    row = next(r for r in api.get(api.acme, "/v1/leaderboard").json()["data"]
               if r["job_id"] == job and r["task"] == "market_news_sentiment")
    assert (row["majority"], row["base_macro_f1"], row["tuned_macro_f1"]) == (0.6, 0.25, 0.25)
    assert row["tuned_recall"] == collapsed.recall and row["base_recall"] == base.recall
    assert row["gate_passed"] is False
    assert row["gate_reason"].endswith(
        "Failed: not above the majority class, collapsed onto 'neutral'.")


def test_the_paired_figures_are_on_the_leaderboard_the_job_page_and_the_api(api: Api
                                                                          ) -> None:
    """Issue #25's example (150 documents): the gate's paired comparisons, vs base and vs
    always answering 'outage', in the delta's tooltip, on the job page and in the API."""
    docs = lambda right: DocOutcomes(  # noqa: E731
        right=sorted(right), wrong=sorted(set(range(150)) - set(right)))
    tuned = docs(set(range(99)) | set(range(101, 117)))
    classes = ClassStats(
        documents=150, majority=101 / 150, majority_stderr=0.038, majority_class="outage",
        chance=0.2, macro_f1=0.6, recall={"outage": 0.98, "billing": 0.3},
        predicted={"outage": 105, "billing": 45}, majority_per_doc=docs(set(range(101))))
    job = seed_model(api.sessions, api.settings, "acme", "p1",
                     scores={"grid_ticket_routing": (29 / 150, 115 / 150),
                             "general_knowledge_guard": (0.6, 0.6)},
                     classes={"grid_ticket_routing": (classes, classes)},
                     per_doc={"grid_ticket_routing": (docs(set(range(26)) | {99, 100, 117}),
                                                      tuned)})
    vs_base = ("vs base: +0.573 (95% CI +0.49 to +0.66; 89 docs only tuned right, 3 only base "
               "right; one-sided p &lt; 0.001)")
    vs_majority = ("vs majority: +0.093 (95% CI +0.04 to +0.15; 16 docs only tuned right, 2 "
                   "only majority right; one-sided p &lt; 0.001)")
    client = _browser(api, api.acme)
    cell = re.search(rf'<tr data-key="job:{job}".*?<td class="num" data-task="grid_ticket_'
                     r'routing".*?</td>', client.get("/leaderboard").text, re.S)
    assert cell is not None
    assert (f'title="over base 0.193: clears&#10;{vs_base}&#10;{vs_majority}"'
            in cell[0])
    html = client.get(f"/jobs/{job}").text
    assert f'<td class="paired">{vs_base}<br>{vs_majority}</td>' in html
    assert '<td class="paired"><span class="muted">-</span></td>' in html  # the guard: none
    (score,) = [s for s in api.get(api.acme, f"/v1/jobs/{job}").json()["scores"]
                if s["task"] == "grid_ticket_routing"]
    assert (score["vs_base"]["only_tuned_right"], score["vs_majority"]["only_other_right"],
            score["majority"], score["samples"]) == (89, 2, 101 / 150, 200)
    (row,) = [r for r in api.get(api.acme, "/v1/leaderboard").json()["data"]
              if r["job_id"] == job and r["task"] == "grid_ticket_routing"]
    assert row["vs_base"] == score["vs_base"] and row["vs_majority"] == score["vs_majority"]
    exported = {r["job_id"]: r for r in client.get("/leaderboard.json").json()["rows"]}[job]
    (csv_row,) = [r for r in csv.DictReader(io.StringIO(client.get("/leaderboard.csv").text))
                  if r["job_id"] == job]
    for other in ("base", "majority"):
        for name, value in score[f"vs_{other}"].items():
            column = f"grid_ticket_routing:vs_{other}_{name}"
            assert exported[column] == value and float(csv_row[column]) == pytest.approx(value)
    assert exported["general_knowledge_guard:vs_base_p_value"] is None  # the guard: none
    assert csv_row["general_knowledge_guard:vs_base_p_value"] == ""


def test_pins_come_from_the_stages_files_in_the_job_directory(api: Api, tmp_path: Path
                                                              ) -> None:
    work = tmp_path / "job"
    (work / "evaluation").mkdir(parents=True)
    (work / "adapter").mkdir()
    TrainingResult(adapter_dir=str(work / "adapter"), base_model_dir="/m", steps=5,
                   final_loss=1.1, train_tokens=900, validation_loss=1.3, wall_s=2.0,
                   tokens_per_s=321.0, peak_memory_mb=2048.0,
                   files_sha256={"adapter_model.safetensors": "cd" * 32}
                   ).write(work / TRAINING_RESULT)
    (work / "evaluation" / EVAL_COMMANDS).write_text(json.dumps(
        {"base": ["lm_eval", "run", "--model", "hf"], "tuned": ["lm_eval", "run", "--x"]}))
    (work / "evaluation" / "lm_eval_tuned.json").write_text(json.dumps(
        {"config": {"model_args": "pretrained=/m,peft=/a,dtype=float32", "device": "cpu"}}))
    (work / "evaluation" / "samples_tuned.jsonl").write_text("{}\n")
    outside = tmp_path / "elsewhere.json"
    outside.write_text("{}")
    (work / "evaluation" / "lm_eval_base.json").symlink_to(outside)
    job = seed_model(api.sessions, api.settings, "acme", "a1", work_dir=work)
    client = _browser(api, api.acme)
    html = client.get("/leaderboard").text
    assert "adapter sha256</dt><dd><code>" + "cd" * 32 in html
    assert "lm_eval run --x" in html and "dtype</dt><dd><code>float32" in html
    page = client.get(f"/jobs/{job}").text
    assert "321.0" in page and "2048 MiB" in page and "1.3000" in page
    assert f'href="/jobs/{job}/files/evaluation/samples_tuned.jsonl"' in page
    assert client.get(f"/jobs/{job}/files/evaluation/samples_tuned.jsonl").content == b"{}\n"
    assert client.get(f"/jobs/{job}/files/evaluation/lm_eval_base.json").status_code == 404
    assert _browser(api, api.globex).get(
        f"/jobs/{job}/files/evaluation/samples_tuned.jsonl").status_code == 404


def test_compare_counts_per_sample_agreement_of_the_readers_own_jobs(api: Api, tmp_path: Path
                                                                    ) -> None:
    dirs = []
    for name, right in (("a", [1, 1, 0, 0, 1]), ("b", [1, 0, 1, 0, 0])):
        work = tmp_path / name / "evaluation"
        work.mkdir(parents=True)
        (work / "samples_tuned.jsonl").write_text("".join(
            json.dumps({"task": "grid_ticket_routing", "doc_id": i, "acc": float(r)}) + "\n"
            for i, r in enumerate(right)))
        dirs.append(work.parent)
    a = seed_model(api.sessions, api.settings, "acme", "a", work_dir=dirs[0], public=True,
                   labels={"name": "model-a"})
    b = seed_model(api.sessions, api.settings, "acme", "b", work_dir=dirs[1], public=True,
                   labels={"name": "model-b"})
    url = f"/compare?m=job:{a}&m=job:{b}&m=base:smollm2-135m-instruct"
    html = _browser(api, api.acme).get(url).text
    assert html.count('data-task="grid_ticket_routing"') == 3
    row = re.search(r"<td>grid_ticket_routing</td><td>model-a</td><td>model-b</td>(.*?)</tr>",
                    html, re.S)[1]  # type: ignore[index]
    assert re.findall(r">(\d+)<", row) == ["1", "2", "1", "1"]
    other = _browser(api, api.globex).get(url).text  # public scores, private samples
    assert html.count('data-task="grid_ticket_routing"') == other.count(
        'data-task="grid_ticket_routing"') and 'id="no-agreement"' in other
    private = seed_model(api.sessions, api.settings, "acme", "c")
    assert "Pick two or more" in _browser(api, api.globex).get(
        f"/compare?m=job:{private}&m=job:{a}").text


def test_job_page_shows_timeline_preflight_progress_and_scores(api: Api) -> None:
    job = seed_model(api.sessions, api.settings, "acme", "a1", labels={"name": "acme-router"})
    with api.sessions() as s:
        s.get_one(Job, job).preflight = {"usable": True, "examples": ["not a report"]}
        s.commit()
    client = _browser(api, api.acme)
    html = client.get(f"/jobs/{job}").text
    for state in ("validating", "queued", "training", "evaluating", "handing_off", "succeeded"):
        assert f'<td><span class="state {state}">' in html
    data = json.loads(re.search(r'id="progress-data">(.*?)</script>', html)[1])  # type: ignore[index]
    assert [p["loss"] for p in data["points"]] == LOSSES
    assert 'id="preflight-unreadable"' in html  # an old or odd report breaks nothing
    with api.sessions() as s:
        s.get_one(Job, job).preflight = PreflightReport(
            recipe="grid-ticket-routing", base_model="smollm2-135m-instruct", max_seq_len=256,
            max_bad_fraction=0.1, validation=None, usable=True, train=SplitReport(
                source="train.jsonl", rows_read=12, rows_usable=11, bad_rows=1,
                bad_row_reasons=["line 4: no completion"], tokens=500, mean_tokens=45.5,
                max_tokens=60, trained_tokens=120, truncated=2, duplicates=0,
                duplicate_rows=[], eval_overlap=1, eval_overlap_rows=["line 9"],
                examples=[RenderedExample(where="line 1", text="Ticket: <b>x</b> Team: grid",
                                          truncated=False)]),
            picked=Picked(auto=["epochs"], rows=11, epochs=10.0, batch_size=8,
                          learning_rate=5e-4, max_steps=14),
            warnings=["20 documents of grid_ticket_routing leave a combined stderr"],
        ).model_dump(mode="json")
        s.commit()
    html = client.get(f"/jobs/{job}").text
    assert "line 4: no completion" in html and "2 examples truncated" in html
    assert ("picked (epochs auto): 10 epochs of 11 rows = 14 steps of batch 8, learning rate "
            "0.0005") in html
    assert "<li>20 documents of grid_ticket_routing leave a combined stderr</li>" in html
    assert "Ticket: &lt;b&gt;x&lt;/b&gt; Team: grid" in html  # escaped, as the model sees it
    assert "rows also in the evaluation data (line 9)" in html
    assert "grid_ticket_routing" in html and "+0.500" in html and "passed" in html
    assert "model.ready" not in html  # this seed announced none
    assert f'href="/jobs/{job}"' in client.get("/jobs").text


REWARDS = [(0.01, 0.4), (0.05, 0.6), (0.2, 0.8), (0.4, 0.9), (0.7, 1.0)]


def test_the_method_is_on_the_leaderboard_and_a_preference_jobs_page_has_reward_curves(
        api: Api) -> None:
    dpo = seed_model(api.sessions, api.settings, "acme", "d1", recipe="citizen-reply-de-dpo",
                     rewards=REWARDS)
    sft = seed_model(api.sessions, api.settings, "acme", "s1")
    client = _browser(api, api.acme)
    board = client.get("/leaderboard").text
    methods = dict(re.findall(r'data-job-id="([^"]+)">.*?<td class="method">(\w*)</td>',
                              board, re.S))
    assert methods == {dpo: "dpo", sft: "sft"}
    assert set(_rows(client.get("/leaderboard?method=dpo").text)) == {
        f"job:{dpo}", "base:smollm2-135m-instruct"}
    assert {r["job_id"]: r["method"] for r in client.get("/leaderboard.json").json()["rows"]
            if r["kind"] == "tuned"} == {dpo: "dpo", sft: "sft"}

    html = client.get(f"/jobs/{dpo}").text
    assert re.search(r'id="fact-method">dpo <span class="muted">\(beta 0.1, sigmoid loss', html)
    assert 'id="reward-chart"' in html
    assert '<dd id="fact-reward-margin">0.700</dd>' in html
    assert '<dd id="fact-reward-accuracy">1.000</dd>' in html
    data = json.loads(re.search(r'id="progress-data">(.*?)</script>', html)[1])  # type: ignore[index]
    assert [(p["reward_margin"], p["reward_accuracy"]) for p in data["points"]] == REWARDS
    html = client.get(f"/jobs/{sft}").text
    assert 'id="fact-method">sft</dd>' in html
    assert 'id="reward-chart"' not in html and "fact-reward-margin" not in html


def test_a_hostile_model_name_is_text_on_every_page(api: Api) -> None:
    hostile = '<script>alert("x")</script><img src=x onerror=alert(1)>'
    job = seed_model(api.sessions, api.settings, "acme", "a1", labels={"name": hostile})
    client = _browser(api, api.acme)
    for url in ("/leaderboard", f"/jobs/{job}", "/jobs", f"/compare?m=job:{job}&m=job:{job}"):
        html = client.get(url).text
        assert "<script>alert" not in html and "<img src=x" not in html, url
    assert client.get("/leaderboard.json").json()["rows"][0]["model"] == hostile
    formula = seed_model(api.sessions, api.settings, "acme", "a2",
                         labels={"name": '=HYPERLINK("http://evil.example")'})
    rows = {r["job_id"]: r for r in csv.DictReader(io.StringIO(
        client.get("/leaderboard.csv").text))}
    assert rows[formula]["model"] == "'=HYPERLINK(\"http://evil.example\")"
    assert float(rows[formula]["general_knowledge_guard:delta"]) == pytest.approx(0.5)


def test_job_pages_need_a_session_and_hide_other_tenants_jobs(api: Api) -> None:
    job = seed_model(api.sessions, api.settings, "acme", "a1")
    public = seed_model(api.sessions, api.settings, "acme", "a2", public=True)
    for path in (f"/jobs/{job}", "/jobs", f"/jobs/{job}/events", f"/jobs/{job}/files/adapter/x",
                 f"/jobs/{public}/events", f"/jobs/{public}/files/adapter/x", "/jobs/no-such"):
        answer = _browser(api).get(path, follow_redirects=False)
        assert answer.status_code == 303 and answer.headers["location"].startswith("/signin")
    theirs = _browser(api, api.globex)
    for path in (f"/jobs/{job}", f"/jobs/{job}/events", "/jobs/no-such-job",
                 f"/jobs/{public}/events", f"/jobs/{public}/files/adapter/x"):
        answer = theirs.get(path)
        assert answer.status_code == 404 and "acme" not in answer.text.replace(job, "")
    assert job not in theirs.get("/jobs").text
    assert _browser(api, api.staff).get(f"/jobs/{job}").status_code == 200


def test_a_published_jobs_page_shows_signed_out_without_the_tenants_data(
        api: Api, tmp_path: Path) -> None:
    """The README: signed out, published jobs show. Their page shows what the leaderboard
    does (states, loss curve, scores, gate, recipe, base model) and nothing of the tenant's:
    not its name, data, pre-flight report, files, model card, frozen recipe or storage."""
    work = tmp_path / "jobs" / "acme-work-dir"
    (work / "adapter").mkdir(parents=True)
    (work / "adapter" / "README.md").write_text("model card: trained on acme-private.jsonl")
    (work / "evaluation").mkdir()
    (work / "evaluation" / "samples_tuned.jsonl").write_text("{}\n")
    job = seed_model(api.sessions, api.settings, "acme", "a1", public=True, work_dir=work,
                     labels={"name": "grid-router"})
    with api.sessions() as s:
        row = s.get_one(Job, job)
        row.adapter_uri = "s3://acme-bucket/adapters/grid-router"
        row.preflight = PreflightReport(
            recipe="grid-ticket-routing", base_model="smollm2-135m-instruct", max_seq_len=256,
            max_bad_fraction=0.1, validation=None, usable=True, train=SplitReport(
                source="acme-private.jsonl", rows_read=12, rows_usable=12, bad_rows=0,
                bad_row_reasons=[], tokens=500, mean_tokens=45.5, max_tokens=60,
                trained_tokens=120, truncated=0, duplicates=0, duplicate_rows=[],
                eval_overlap=0, eval_overlap_rows=[],
                examples=[RenderedExample(where="line 1", text="Ticket: meter 4711 of Ms Doe",
                                          truncated=False)]),
        ).model_dump(mode="json")
        train_file = row.recipe["data"]["train_file"]
        s.commit()
    leaderboard = _browser(api).get("/leaderboard").text
    assert f'href="/jobs/{job}"' in leaderboard  # a published row links its page
    for client in (_browser(api), _browser(api, api.globex)):
        answer = client.get(f"/jobs/{job}", follow_redirects=False)
        assert answer.status_code == 200, answer.text
        html = answer.text
        assert "grid-router" in html and 'id="public-part"' in html
        assert '<td><span class="state succeeded">' in html and "+0.500" in html
        data = json.loads(re.search(r'id="progress-data">(.*?)</script>', html)[1])  # type: ignore[index]
        assert [p["loss"] for p in data["points"]] == LOSSES
        assert 'data-terminal="true"' in html  # no event stream: that is the tenant's
        for private in ("acme", str(work), "Ms Doe", "model card", "s3://acme-bucket",
                        train_file, "/files/", "Frozen recipe", "samples_tuned"):
            assert private not in html, private
    own = _browser(api, api.acme).get(f"/jobs/{job}").text
    assert 'id="public-part"' not in own
    for shown in ("acme", "Ms Doe", "model card", "s3://acme-bucket", "samples_tuned"):
        assert shown in own, shown


def test_the_tenants_own_job_page_shows_its_paths_as_the_tenant_named_them(
        api: Api, tmp_path: Path) -> None:
    """The frozen recipe holds the server's paths (the stages read them); the page shows
    the tenant's file relative to its data root, the job's own files as `job/...`, a
    shipped recipe's as `recipes/...`, and nothing of where the service keeps them."""
    work = tmp_path / "jobs" / "acme" / "a-job"
    work.mkdir(parents=True)
    job = seed_model(api.sessions, api.settings, "acme", "a1", work_dir=work)
    tenant_file = (api.settings.data_root / "acme" / "tickets" / "2026.jsonl").resolve()
    with api.sessions() as s:
        row = s.get_one(Job, job)
        recipe = json.loads(json.dumps(row.recipe))
        recipe["data"]["train_file"] = str(tenant_file)
        recipe["data"]["eval_file"] = str(work / "held_out.jsonl")
        recipe["data"]["validation_file"] = "/srv/elsewhere/valid.jsonl"
        row.recipe, shipped_yaml = recipe, recipe["eval"]["tasks"][0]["yaml"]
        s.commit()
    html = _browser(api, api.acme).get(f"/jobs/{job}").text
    assert shipped_yaml.startswith("/")
    assert "tickets/2026.jsonl" in html and "job/held_out.jsonl" in html
    assert "recipes/energy/grid_ticket_routing/tasks/grid_ticket_routing.yaml" in html
    assert "valid.jsonl" in html
    for server in (str(api.settings.data_root), str(tmp_path), "/srv/elsewhere",
                   shipped_yaml.rsplit("/recipes/", 1)[0]):
        assert server not in html, server


def test_the_job_page_stream_is_the_jobs_events(api: Api) -> None:
    job = seed_model(api.sessions, api.settings, "acme", "a1")
    with _browser(api, api.acme).stream("GET", f"/jobs/{job}/events?after=0") as answer:
        body = "".join(answer.iter_text())
    assert answer.headers["content-type"].startswith("text/event-stream")
    assert body.count(JobProgress.TYPE) == len(LOSSES) and '"succeeded"' in body


def test_every_asset_is_served_by_the_app(api: Api) -> None:
    client = _browser(api, api.acme)
    job = seed_model(api.sessions, api.settings, "acme", "a1")
    for page in ("/leaderboard", f"/jobs/{job}", "/signin", "/compare"):
        html = client.get(page).text
        for url in re.findall(r'(?:src|href)="([^"]+)"', html):
            assert not url.startswith(("http:", "https:", "//")), (page, url)
            if url.startswith("/static/"):
                assert client.get(url).status_code == 200, url
    assert client.get("/static/vendor/uplot/LICENSE").text.startswith("The MIT License")
