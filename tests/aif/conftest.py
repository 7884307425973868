"""Fixtures of the orchestrator tests."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from aif.db.models import Job, Outbox, Tenant
from aif.launchers import get_launcher
from aif.orchestrator.intake import accept
from aif.orchestrator.worker import JobWorker
from aif.service import Service
from aif.settings import Settings
from aif.tenants import add_api_key, add_signing_key, create_tenant
from aif.web.app import create_app
from events.bus import envelope, make_producer, publish
from events.envelope import job_id_for
from events.messages import FineTuneRequested
from events.signing import SigningKey
from events.states import JobState
from recipes import copied_into, load_recipe


def signing_key(sessions: sessionmaker[Session], tenant: str = "acme") -> SigningKey:
    """A new signing key of `tenant` in the job store, creating the tenant if it is missing."""
    with sessions() as s:
        if s.get(Tenant, tenant) is None:
            credentials = create_tenant(s, tenant)
            key = SigningKey(credentials.signing_key_id, credentials.signing_secret)
        else:
            key = SigningKey(*add_signing_key(s, tenant))
        s.commit()
    return key


@pytest.fixture
def acme_key(sessions: sessionmaker[Session]) -> SigningKey:
    """Tenant `acme` in the test's job store, and its signing key."""
    return signing_key(sessions, "acme")


@pytest.fixture(autouse=True)
def data_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every service (and `aif up` process) of a test keeps tenants' data in the test's
    `<tmp_path>/data`: the default for `Settings(home=tmp_path)`, and the same for the
    tests whose home is elsewhere."""
    root = tmp_path / "data"
    monkeypatch.setenv("AIF_DATA_ROOT", str(root))
    return root


@pytest.fixture
def tiny_request(tiny_model_dir: Path, data_root: Path,
                 monkeypatch: pytest.MonkeyPatch) -> FineTuneRequested:
    """The shipped recipe on the tiny model, its files copied into tenant acme's data root:
    short training, 20 eval docs, a gate that lets a random model pass (these tests are about
    the orchestrator, not about learning). The tiny model's folder is one of the site's base
    model roots, as a centre's own model store would be."""
    monkeypatch.setenv("AIF_BASE_MODEL_ROOTS", json.dumps([str(tiny_model_dir)]))
    recipe = copied_into(load_recipe("grid-ticket-routing"), data_root / "acme")
    recipe = recipe.model_copy(update={
        "name": "tiny-grid-routing",
        "model": recipe.model.model_copy(update={"base": str(tiny_model_dir)}),
        "train": recipe.train.model_copy(update={"max_steps": 40, "batch_size": 4,
                                                 "logging_steps": 1}),
        "eval": recipe.eval.model_copy(update={"limit": 20}),
        "gate": recipe.gate.model_copy(update={"min_gain": -1.0, "alpha": 1.0,
                                               "majority_margin": -1.0, "max_class_share": 1.0,
                                               "guards": []}),
    })
    return FineTuneRequested(recipe_inline=recipe)


def local_worker(sessions: sessionmaker[Session], home: Path, **settings: object) -> JobWorker:
    """A worker on the local launcher with no producer at all: it publishes only through the
    outbox. Its leases outlast any step of a test on a loaded box (a 30 s lease once expired
    between two steps and let the worker claim its own job again); a test about expiry
    expires the lease itself."""
    return JobWorker(Settings(home=home, lease_s=600, **settings),  # type: ignore[arg-type]
                     sessions, get_launcher("local"))


def store_trusted(sessions: sessionmaker[Session], **data: object) -> str:
    """A request of tenant acme stored as intake stores it, trusted as on a network without
    signing and without admission: these tests are about the worker."""
    ev = envelope(FineTuneRequested.model_validate(data), source="urn:t", tenant="acme")
    with sessions() as s:
        result = accept(s, ev.to_bytes(), Settings().topics, require_signed=False)
        s.commit()
    assert result.job_id, result.reason
    return result.job_id


def everything_said(sessions: sessionmaker[Session], job_id: str) -> str:
    """Every place a refusal could show up: job row, outbox events, report, HTTP answers
    (through /v1 with the tenant's API key), the stage's own log, report and failure."""
    with sessions() as s:
        job = s.get_one(Job, job_id)
        said = [job.reason, json.dumps(job.preflight), *(t.reason for t in job.transitions),
                *s.scalars(select(Outbox.payload)).all()]
        work_dir, tenant = job.work_dir, job.tenant
        if s.get(Tenant, tenant) is None:
            create_tenant(s, tenant)
        auth = {"Authorization": f"Bearer {add_api_key(s, tenant)[1]}"}
        s.commit()
    client = TestClient(create_app(sessions, Settings()))
    answers = [client.get(f"/v1/jobs/{job_id}{tail}", headers=auth) for tail in ("", "/preflight")]
    assert answers[0].status_code == 200, answers[0].text
    said += [a.text for a in answers]
    said += [p.read_text(errors="replace") for p in Path(work_dir or "/nonexistent").glob(
        "*") if p.suffix in (".log", ".json")]
    return "\n".join(said)


def run_to_the_end(settings: Settings, sessions: sessionmaker[Session],
                   request: FineTuneRequested, timeout: float = 600) -> Job:
    """Serve with `settings`, publish the request signed by tenant acme, return the job row
    once it is terminal and its events are on the bus: the relay sends the last state's
    events (model.ready among them) after the state is stored, and on a loaded box a reader
    started after this returned once found the service stopped before it had sent them."""
    key = signing_key(sessions, "acme")
    event = envelope(request, source="urn:test:jobs", tenant="acme")
    job_id = job_id_for("acme", event.source, event.id)
    with Service(settings, web=False):
        producer = make_producer(settings.kafka)
        publish(producer, settings.topics.requests, event, key=job_id, signing_key=key)
        producer.close()
        deadline = time.monotonic() + timeout
        while True:
            with sessions() as s:
                job = s.get(Job, job_id)
                unsent = s.scalar(select(func.count()).select_from(Outbox).where(
                    Outbox.key == job_id, Outbox.published_at.is_(None)))
                if job is not None and JobState(job.state).terminal and not unsent:
                    s.expunge(job)
                    return job
            assert time.monotonic() < deadline, "the job did not finish, or its events stay unsent"
            time.sleep(1)
