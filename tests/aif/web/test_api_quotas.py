"""Quotas and compute over HTTP: a job shows its estimate and measured compute, an upload over
the tenant's dataset-size quota is refused naming it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.orm import Session, sessionmaker

from aif.db.models import Job
from aif.quotas import set_quota
from aif.settings import QuotaLimits, Settings
from events.bus import KafkaConfig
from events.states import JobState
from tests.aif.test_quotas import _estimate, _measured
from tests.aif.web.test_api_files import ROWS, _client, _jsonl, _stored, keys  # noqa: F401
from tests.aif.web.test_api_jobs import Api, make_api
from tests.conftest import free_port


@pytest.fixture
def api(sessions: sessionmaker[Session], tmp_path: Path) -> Iterator[Api]:
    settings = Settings(home=tmp_path, topic_prefix="api",
                        kafka=KafkaConfig(bootstrap_servers=f"127.0.0.1:{free_port()}"))
    yield from make_api(sessions, settings)


def test_a_job_shows_its_estimate_and_what_training_measured(api: Api) -> None:
    job_id = api.store_job("acme", [JobState.validating, JobState.queued])
    assert api.get(api.acme, f"/v1/jobs/{job_id}").json()["estimate"] is None
    with api.sessions() as s:
        job = s.get_one(Job, job_id)
        job.estimate = _estimate(1200, 0.5).model_dump(mode="json")
        job.measured = _measured(1180, 0.45)
        s.commit()
    shown = api.get(api.acme, f"/v1/jobs/{job_id}").json()
    assert (shown["estimate"]["tokens"], shown["estimate"]["device_hours"]) == (1200, 0.5)
    assert (shown["measured"]["tokens"], shown["measured"]["device_hours"]) == (1180, 0.45)
    listed = api.get(api.acme, "/v1/jobs").json()["data"]
    assert listed[0]["measured"]["tokens"] == 1180


def test_an_upload_over_the_dataset_quota_is_refused_naming_it(
    sessions: sessionmaker[Session], tmp_path: Path, keys: dict,  # noqa: F811
) -> None:
    content = _jsonl(ROWS)
    with sessions() as s:
        set_quota(s, "acme", {"dataset_bytes": len(content) - 1})
        s.commit()
    client = _client(sessions, tmp_path)
    refused = client.post("/v1/files", headers=keys["acme"],
                          files={"file": ("t.jsonl", content)})
    assert refused.status_code == 413
    assert refused.json()["detail"] == (
        f"file: larger than the limit of {len(content) - 1} bytes (quota: dataset size, "
        f"tenant limit {len(content) - 1:,})")
    assert _stored(tmp_path) == []
    # Another tenant is not held to acme's quota; a site default holds everyone.
    assert client.post("/v1/files", headers=keys["globex"],
                       files={"file": ("t.jsonl", content)}).status_code == 201
    strict = _client(sessions, tmp_path / "site",
                     quota_defaults=QuotaLimits(dataset_bytes=10))
    answer = strict.post("/v1/files", headers=keys["globex"], files={"file": ("t.jsonl", content)})
    assert answer.status_code == 413 and "site default 10" in answer.json()["detail"]
    with sessions() as s:
        set_quota(s, "acme", {"dataset_bytes": len(content)})
        s.commit()
    assert client.post("/v1/files", headers=keys["acme"],
                       files={"file": ("t.jsonl", content)}).status_code == 201
