"""DELETE /v1/files/{id}: refused while jobs name the file; `cascade=true` erases the file
and what was trained on it, on a real database and real files. And the operator's
commands: `aif tenants erase`, `aif audit`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker
from typer.testing import CliRunner

from aif import audit
from aif.cli import app
from aif.db.models import Audit, DataFile, Job, Outbox, Score
from aif.jobstore.transitions import transition
from aif.orchestrator.intake import accept
from aif.settings import Settings
from aif.tenants import create_tenant
from aif.web.app import create_app
from events.bus import envelope
from events.envelope import CloudEvent
from events.messages import FineTuneRequested, ModelRetired
from events.states import JobState

ROWS = "".join(json.dumps({"text": f"pole {i}", "label": "grid"}) + "\n" for i in range(5))


def _job(sessions: sessionmaker[Session], settings: Settings, file_id: str, n: int,
         handed_off: bool) -> str:
    raw = envelope(FineTuneRequested(recipe="grid-ticket-routing", file_id=file_id),
                   source="urn:acme", tenant="acme", event_id=f"{file_id}-{n}").to_bytes()
    with sessions() as s:
        job_id = accept(s, raw, settings.topics, require_signed=False).job_id
        job = s.get_one(Job, job_id)
        work = settings.jobs_dir / "acme" / job_id
        (work / "adapter").mkdir(parents=True)
        (work / "adapter" / "adapter_model.safetensors").write_bytes(b"weights")
        job.work_dir = str(work)
        for to in ([JobState.queued, JobState.training, JobState.evaluating,
                    JobState.handing_off, JobState.succeeded] if handed_off else
                   [JobState.rejected]):
            transition(s, job, to, settings.topics)
        s.add(Score(job=job, task="t", metric="acc", base=0.1, tuned=0.5, num_fewshot=0,
                    samples=1, lm_eval_version="0.4", task_config_sha256="0" * 64))
        s.commit()
    return job_id


@pytest.fixture
def setup(sessions: sessionmaker[Session], tmp_path: Path
          ) -> tuple[TestClient, Settings, dict[str, str]]:
    settings = Settings(home=tmp_path / "home")
    with sessions() as s:
        made = create_tenant(s, "acme")
        s.commit()
    return (TestClient(create_app(sessions, settings)), settings,
            {"Authorization": f"Bearer {made.api_key}"})


def _upload(client: TestClient, auth: dict[str, str]) -> str:
    answer = client.post("/v1/files", headers=auth, files={"file": ("t.jsonl", ROWS.encode())})
    assert answer.status_code == 201, answer.text
    return answer.json()["id"]


def test_a_file_jobs_were_trained_on_is_deleted_only_with_them(
    sessions: sessionmaker[Session], setup: tuple[TestClient, Settings, dict[str, str]]
) -> None:
    client, settings, auth = setup
    used, other = _upload(client, auth), _upload(client, auth)
    tuned = _job(sessions, settings, used, 0, handed_off=True)
    refused = _job(sessions, settings, used, 1, handed_off=False)
    kept = _job(sessions, settings, other, 0, handed_off=True)

    answer = client.delete(f"/v1/files/{used}", headers=auth)
    assert answer.status_code == 409 and "2 job(s)" in answer.json()["detail"]
    with sessions() as s:
        assert s.get(DataFile, used) is not None

    assert client.delete(f"/v1/files/{used}?cascade=true", headers=auth).status_code == 204
    with sessions() as s:
        assert s.get(DataFile, used) is None and s.get(DataFile, other) is not None
        assert {j for j in s.scalars(select(Job.id))} == {kept}
        assert {sc.job_id for sc in s.scalars(select(Score))} == {kept}
        left = [CloudEvent.model_validate_json(p) for p in s.scalars(
            select(Outbox.payload).where(Outbox.key.in_([tuned, refused])))]
        (row,) = s.scalars(select(Audit).where(Audit.action == "file-deleted"))
    assert [(e.type, e.subject) for e in left] == [(ModelRetired.TYPE, tuned)]
    assert ModelRetired.model_validate(left[0].data).reason == "file-erased"
    assert not (settings.jobs_dir / "acme" / tuned).exists()
    assert not (settings.jobs_dir / "acme" / refused).exists()
    assert (settings.jobs_dir / "acme" / kept / "adapter").is_dir()
    assert not (settings.home / "data" / "acme" / "files" / used).exists()
    assert row.actor.startswith("api:") and row.detail["cascade"] is True
    assert row.detail["rows"]["jobs"] == 2 and row.detail["retired"] == [tuned]
    assert len(row.detail["files_sha256"]) == 3  # the upload and two adapters

    # A file no job names is deleted as before, and audited with its digest.
    unused = _upload(client, auth)
    assert client.delete(f"/v1/files/{unused}", headers=auth).status_code == 204
    with sessions() as s:
        (plain,) = s.scalars(select(Audit).where(Audit.action == "file-deleted",
                                                 Audit.id != row.id))
    assert plain.detail["cascade"] is False and len(plain.detail["files_sha256"]) == 1


@pytest.mark.store
def test_operators_erase_a_tenant_and_read_the_audit_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AIF_HOME", str(tmp_path / "home"))
    runner = CliRunner()
    assert runner.invoke(app, ["tenants", "create", "acme"]).exit_code == 0
    asked = runner.invoke(app, ["tenants", "erase", "acme"], input="n\n")
    assert asked.exit_code == 1  # not confirmed: nothing happens
    listed = runner.invoke(app, ["audit", "--tenant", "acme", "--json"])
    assert [json.loads(line)["action"] for line in listed.stdout.splitlines()] == [
        "key-created", "key-created"]
    done = runner.invoke(app, ["tenants", "erase", "acme", "--yes"])
    assert done.exit_code == 0, done.stdout
    assert "api_keys 1" in done.stdout and "signing_keys 1" in done.stdout
    rows = [json.loads(line) for line in runner.invoke(
        app, ["audit", "--tenant", "acme", "--json"]).stdout.splitlines()]
    assert [r["action"] for r in rows] == ["key-created", "key-created", "erase"]
    assert rows[-1]["actor"] == audit.OPERATOR
    assert rows[-1]["detail"]["rows"] == {"api_keys": 1, "signing_keys": 1}
    assert runner.invoke(app, ["tenants", "create", "acme"]).exit_code == 2  # name kept
    assert "erased" in runner.invoke(app, ["tenants", "list"]).stdout
    assert runner.invoke(app, ["tenants", "erase", "nobody", "--yes"]).exit_code == 1
    table = runner.invoke(app, ["audit"])
    assert table.exit_code == 0 and "erase" in table.stdout
