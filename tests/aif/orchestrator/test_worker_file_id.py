"""A request naming an uploaded `file_id` trains on that file, and only on its own tenant's:
uploaded through the API, validated by the worker with the real pre-flight stage."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from aif.db.models import Job
from aif.jobstore.transitions import transition
from aif.launchers import get_launcher
from aif.orchestrator.worker import JobWorker
from aif.settings import Settings
from aif.tenants import create_tenant
from aif.web.deps import install_problem_handlers
from aif.web.routes import files
from events.bus import envelope
from events.messages import FineTuneRequested
from events.states import JobState
from recipes import load_recipe

NO_FILE = "data.file_id: no such file for this tenant"


def _upload(sessions: sessionmaker[Session], settings: Settings, tenant: str) -> dict:
    """A new tenant uploads 40 rows of the shipped recipe's data through the files API."""
    with sessions() as s:
        key = create_tenant(s, tenant).api_key
        s.commit()
    app = FastAPI()
    install_problem_handlers(app)
    app.include_router(files.router)
    app.state.sessions, app.state.settings = sessions, settings
    shipped = load_recipe("grid-ticket-routing").data.train_file
    assert shipped is not None
    rows = b"".join(Path(shipped).read_bytes().splitlines(keepends=True)[:40])
    answer = TestClient(app).post("/v1/files", headers={"Authorization": f"Bearer {key}"},
                                  files={"file": ("tickets.jsonl", rows)})
    assert answer.status_code == 201, answer.text
    return answer.json()


def _store(sessions: sessionmaker[Session], settings: Settings, tenant: str,
           request: FineTuneRequested) -> str:
    """A job as the intake stores one: in `validating`, with the request event."""
    event = envelope(request, source="urn:test:files", tenant=tenant)
    job = Job(id=str(uuid.uuid4()), tenant=tenant, request_source=event.source,
              request_id=event.id, request_sha256="0" * 64,
              request=event.model_dump(mode="json"), state=None, reason="",
              recipe_name=request.recipe_inline and request.recipe_inline.name)
    with sessions() as s:
        s.add(job)
        transition(s, job, JobState.validating, settings.topics, reason="request accepted")
        s.commit()
    return job.id


def test_a_job_naming_its_file_id_trains_on_the_stored_file(
    sessions: sessionmaker[Session], tmp_path: Path, tiny_request: FineTuneRequested
) -> None:
    settings = Settings(home=tmp_path, lease_s=30)  # type: ignore[call-arg]
    uploaded = _upload(sessions, settings, "acme")
    request = tiny_request.model_copy(update={"file_id": uploaded["id"]})
    job_id = _store(sessions, settings, "acme", request)
    worker = JobWorker(settings, sessions, get_launcher("local"))
    assert worker.leases.claim() == job_id
    worker.steps.validate(worker.load(job_id))  # the pre-flight stage really runs
    job = worker.load(job_id)
    assert job.state == JobState.queued, job.reason
    stored = str(tmp_path / "data" / "acme" / "files" / uploaded["id"] / "data.jsonl")
    assert job.preflight["train"]["source"] == uploaded["id"]  # as the tenant named it
    assert job.preflight["train"]["rows_usable"] == 40
    assert job.recipe["data"]["train_file"] == stored  # what the training stage will read


@pytest.mark.parametrize("owner", ["globex", None])  # another tenant's file, no such file
def test_a_file_id_of_another_tenant_is_rejected_like_an_unknown_one(
    sessions: sessionmaker[Session], tmp_path: Path, tiny_request: FineTuneRequested,
    owner: str | None
) -> None:
    settings = Settings(home=tmp_path, lease_s=30)  # type: ignore[call-arg]
    file_id = _upload(sessions, settings, owner)["id"] if owner else "file-" + "0" * 24
    request = tiny_request.model_copy(update={"file_id": file_id})
    worker = JobWorker(settings, sessions, get_launcher("local"))
    job_id = _store(sessions, settings, "acme", request)
    assert worker.leases.claim() == job_id
    worker.run_job(job_id)
    job = worker.load(job_id)
    assert (job.state, job.reason) == (JobState.rejected, NO_FILE)
    assert job.preflight is None  # refused before any stage ran


def test_a_request_names_one_data_source() -> None:
    with pytest.raises(ValueError, match="at most one of 'train_file' or 'dataset' or 'file_id'"):
        FineTuneRequested(recipe="grid-ticket-routing", train_file="t.jsonl", file_id="file-1")
