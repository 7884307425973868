"""Hand-off of a real tiny-model job through the service: the serving check stage, the
published and verified files, the registry row, `model.ready` v2, and retiring the version
from the CLI and over HTTP, each tenant seeing only its own."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker
from typer.testing import CliRunner

from aif.cli import app as cli
from aif.db.models import Outbox, RegisteredModel
from aif.settings import Settings
from aif.tenants import add_api_key, create_tenant
from aif.web.app import create_app
from events.bus import KafkaConfig
from events.envelope import CloudEvent
from events.messages import (
    EvaluationCompleted,
    FineTuneRequested,
    MetricScore,
    ModelReady,
    ModelReadyV2,
    ModelRetired,
    ModelServing,
)
from events.states import JobState
from events.topics import Topics
from stagefiles.checksums import sha256_file
from stagefiles.jobspec import SERVING_CHECK_RESULT, ServingCheckResult
from tests.aif.conftest import run_to_the_end
from tests.conftest import free_port


def _settings(tmp_path: Path, db_url: str, broker: str, topics: Topics, **more: object
              ) -> Settings:
    return Settings(home=tmp_path / "home", database_url=db_url,  # type: ignore[arg-type]
                    kafka=KafkaConfig(bootstrap_servers=broker), topic_prefix=topics.prefix,
                    embedded_broker=False, max_poll_interval_ms=3000, session_timeout_ms=3000,
                    **more)


def _events(sessions: sessionmaker[Session], job_id: str, kind: type) -> list:
    with sessions() as s:
        rows = [CloudEvent.model_validate_json(p) for p in s.scalars(
            select(Outbox.payload).where(Outbox.key == job_id))]
    return [kind.model_validate(e.data) for e in rows if e.type == kind.TYPE]


def _short(request: FineTuneRequested, **lora: object) -> FineTuneRequested:
    recipe = request.recipe_inline
    assert recipe is not None
    return FineTuneRequested(recipe_inline=recipe.model_copy(update={
        "train": recipe.train.model_copy(update={"max_steps": 4}),
        "lora": recipe.lora.model_copy(update=lora)}), labels={"model": "router"})


def test_a_passing_model_is_checked_published_registered_and_retired(
    broker: str, topics: Topics, db_url: str, sessions: sessionmaker[Session],
    tiny_request: FineTuneRequested, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    away = f"http://127.0.0.1:{free_port()}"  # an inference server that is down
    settings = _settings(tmp_path, db_url, broker, topics, serving_endpoints=[away],
                         serving_attempts=2,
                         served_base_models={str(tiny_request.recipe_inline.model.base):
                                             "tiny-base"})
    job = run_to_the_end(settings, sessions, _short(tiny_request))
    assert job.state == JobState.succeeded, job.reason
    assert job.reason == "model handed off as acme/router:1"

    # The check ran as its own stage and recorded what a server needs to know.
    check = ServingCheckResult.read(Path(job.work_dir or "") / SERVING_CHECK_RESULT)
    assert (check.adapter.r, check.adapter.min_max_lora_rank,
            check.adapter.modules_to_save) == (16, 16, [])
    assert check.sample_docs == 20 and len(check.base_revision) == 64

    (v1,) = _events(sessions, job.id, ModelReady)  # v1 readers keep working
    (ready,) = _events(sessions, job.id, ModelReadyV2)
    assert (ready.name, ready.version, ready.served_name) == ("acme/router", 1,
                                                              "acme.router.v1")
    assert ready.intent == "load" and ready.base_model.id == "tiny-base"
    assert ready.base_model.revision == check.base_revision
    assert ready.adapter.r == 16 and ready.adapter.use_dora is False
    assert ready.files_sha256 == v1.files_sha256
    published = Path(ready.adapter_uri.removeprefix("file://"))
    assert published == settings.published_dir / "acme.router.v1"
    assert {n: sha256_file(published / n) for n in ready.files_sha256} == ready.files_sha256
    assert ready.scores[0].tuned == check.rescored  # the score plain peft reproduced
    (evaluated,) = _events(sessions, job.id, EvaluationCompleted)
    assert v1.scores == ready.scores == evaluated.scores  # all fields the gate decided on

    # The server that is down is reported, and does not fail the hand-off.
    (serving,) = _events(sessions, job.id, ModelServing)
    assert serving.outcomes == {away: "failed: ConnectError"}
    with sessions() as s:
        (row,) = s.scalars(select(RegisteredModel)).all()
        assert (row.status, row.job_id, row.tenant) == ("ready", job.id, "acme")
        assert row.serving == {away: "failed: ConnectError"}
        assert [MetricScore.model_validate(x) for x in row.scores] == evaluated.scores
        acme = {"Authorization": f"Bearer {add_api_key(s, 'acme')[1]}"}
        create_tenant(s, "globex")
        globex = {"Authorization": f"Bearer {add_api_key(s, 'globex')[1]}"}
        s.commit()

    client = TestClient(create_app(sessions, settings))
    url = "/v1/models/acme/router/versions/1"
    listed = client.get("/v1/models", headers=acme).json()["data"]
    assert [(m["name"], m["version"], m["status"]) for m in listed] == [
        ("acme/router", 1, "ready")]
    assert client.get(url, headers=acme).json()["files_sha256"] == ready.files_sha256
    assert client.get("/v1/models", headers=globex).json() == {"data": []}
    for answer in (client.get(url, headers=globex),
                   client.post(f"{url}/retire", headers=globex)):
        assert answer.status_code == 404, answer.text  # exactly like no such model
    assert client.get("/v1/models/acme/router/versions/2", headers=acme).status_code == 404

    env = {"AIF_HOME": str(settings.home), "AIF_DATABASE_URL": db_url,
           "AIF_TOPIC_PREFIX": topics.prefix}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    runner = CliRunner()
    shown = runner.invoke(cli, ["models", "show", "acme/router"])
    assert shown.exit_code == 0, shown.output
    assert json.loads(shown.output)["served_name"] == "acme.router.v1"
    missing = runner.invoke(cli, ["models", "show", "acme/router:7"])
    assert missing.exit_code == 2 and "acme/router:7: no such model" in missing.output
    assert "acme/router" in runner.invoke(cli, ["models", "list"]).output

    if db_url.startswith("sqlite"):  # retire one way per database
        retired = runner.invoke(cli, ["models", "retire", "acme/router:1"])
        assert retired.exit_code == 0, retired.output
    else:
        assert client.post(f"{url}/retire", headers=acme).json()["status"] == "retired"
    assert client.get(url, headers=acme).json()["status"] == "retired"
    (gone,) = _events(sessions, job.id, ModelRetired)
    assert (gone.name, gone.version, gone.reason) == ("acme/router", 1, "retired")
    assert not published.exists()


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_a_rank_above_the_servers_limit_fails_the_job_before_publishing(
    broker: str, topics: Topics, db_url: str, sessions: sessionmaker[Session],
    tiny_request: FineTuneRequested, tmp_path: Path,
) -> None:
    settings = _settings(tmp_path, db_url, broker, topics)
    job = run_to_the_end(settings, sessions, _short(tiny_request, r=32, alpha=64))
    assert job.state == JobState.failed
    assert job.reason == ("serving check: adapter_config.r: 32 is above the servers' "
                          "max_lora_rank 16 (AIF_SERVING_LIMITS__MAX_LORA_RANK)")
    assert _events(sessions, job.id, ModelReady) == _events(sessions, job.id, ModelReadyV2) == []
    assert not settings.published_dir.exists()
    with sessions() as s:
        assert s.scalars(select(RegisteredModel)).all() == []
