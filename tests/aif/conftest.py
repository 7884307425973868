"""Fixtures of the orchestrator tests."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from sqlalchemy.orm import Session, sessionmaker

from aif.db.models import Job, Tenant
from aif.service import Service
from aif.settings import Settings
from aif.tenants import add_signing_key, create_tenant
from events.bus import envelope, make_producer, publish
from events.envelope import job_id_for
from events.messages import FineTuneRequested
from events.signing import SigningKey
from events.states import JobState
from recipes import load_recipe


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


@pytest.fixture
def tiny_request(tiny_model_dir: Path) -> FineTuneRequested:
    """The shipped recipe on the tiny model: short training, 20 eval docs, a gate that lets a
    random model pass (these tests are about the orchestrator, not about learning)."""
    recipe = load_recipe("grid-ticket-routing")
    recipe = recipe.model_copy(update={
        "name": "tiny-grid-routing",
        "model": recipe.model.model_copy(update={"base": str(tiny_model_dir)}),
        "train": recipe.train.model_copy(update={"max_steps": 40, "batch_size": 4,
                                                 "logging_steps": 1}),
        "eval": recipe.eval.model_copy(update={"limit": 20}),
        "gate": recipe.gate.model_copy(update={"min_gain": -1.0, "stderr_factor": 0.0,
                                               "guards": []}),
    })
    return FineTuneRequested(recipe_inline=recipe)


def run_to_the_end(settings: Settings, sessions: sessionmaker[Session],
                   request: FineTuneRequested, timeout: float = 600) -> Job:
    """Serve with `settings`, publish the request signed by tenant acme, return the job row
    once it is terminal."""
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
                if job is not None and JobState(job.state).terminal:
                    s.expunge(job)
                    return job
            assert time.monotonic() < deadline, "the job did not finish"
            time.sleep(1)
