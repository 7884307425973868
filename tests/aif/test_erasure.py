"""Right to erasure on a real database (SQLite and PostgreSQL) and real files: after
`erase_tenant`, a walk of every storage root and a scan of every table (from the metadata,
so a new table cannot be missed) find nothing of the tenant but its tombstone, the audit
log and the `model.retired` announcements; the other tenant keeps everything."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from kafka.consumer.fetcher import ConsumerRecord
from sqlalchemy import select, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker

from aif import audit, storage
from aif.db.models import Audit, Base, Job, Outbox, Score, Tenant
from aif.erasure import erase_tenant
from aif.jobstore.outbox import enqueue_event
from aif.jobstore.transitions import transition
from aif.launchers import StageCommand, get_launcher
from aif.orchestrator.dead_letters import note_dead_letter
from aif.orchestrator.errors import LeaseLost, StageRunFailed
from aif.orchestrator.intake import Outcome, accept
from aif.orchestrator.worker import JobWorker
from aif.settings import Settings
from aif.tenants import TenantError, create_tenant
from aif.web.app import create_app
from events.bus import envelope
from events.envelope import CloudEvent
from events.messages import FineTuneRequested, ModelReady, ModelRetired
from events.states import JobState

pytestmark = pytest.mark.store  # the cascades of an erasure and the audit log's triggers

S = JobState
TO_SUCCESS = [S.queued, S.training, S.evaluating, S.handing_off, S.succeeded]
STAGES = Path(__file__).parent / "stages"


def _marker(tenant: str) -> str:
    return f"SECRET-{tenant.upper()}-7c1e"


def _world(sessions: sessionmaker[Session], settings: Settings, client: TestClient,
           tenant: str) -> dict[str, object]:
    """A tenant with an upload, a handed-off job trained on it (adapter, checkpoint,
    samples, scores, events), a queued job and a dead letter; its ids and raw events."""
    with sessions() as s:
        made = create_tenant(s, tenant)
        s.commit()
    auth = {"Authorization": f"Bearer {made.api_key}"}
    rows = "".join(json.dumps({"text": f"{_marker(tenant)} pole {i}", "label": "grid"}) + "\n"
                   for i in range(5))
    upload = client.post("/v1/files", headers=auth, files={"file": ("t.jsonl", rows.encode())})
    assert upload.status_code == 201, upload.text
    file_id = upload.json()["id"]
    raws, job_ids = [], []
    for n in range(2):
        raw = envelope(FineTuneRequested(recipe="grid-ticket-routing", file_id=file_id),
                       source=f"urn:{tenant}:mlops", tenant=tenant,
                       event_id=f"req-{n}").to_bytes()
        with sessions() as s:
            result = accept(s, raw, settings.topics, require_signed=False)
            s.commit()
        assert result.outcome is Outcome.accepted
        raws.append(raw)
        job_ids.append(result.job_id)
    done, queued = job_ids
    work = settings.jobs_dir / tenant / done
    for name in ("adapter/adapter_model.safetensors", "checkpoints/step-1/optimizer.pt",
                 "evaluation/samples_tuned.jsonl", "preflight.json"):
        (work / name).parent.mkdir(parents=True, exist_ok=True)
        (work / name).write_text(f"{_marker(tenant)} {name}")
    own_scores = storage.base_scores(settings.base_scores_dir, tenant) / "entry.json"
    own_scores.parent.mkdir(parents=True)  # base scores on the tenant's own tasks
    own_scores.write_text(f"{_marker(tenant)} scores")
    with sessions() as s:
        job = s.get_one(Job, done)
        job.work_dir, job.adapter_uri = str(work), (work / "adapter").as_uri()
        for to in TO_SUCCESS:
            transition(s, job, to, settings.topics)
        s.add(Score(job=job, task="grid", metric="acc", base=0.2, tuned=0.9, num_fewshot=0,
                    samples=20, lm_eval_version="0.4", task_config_sha256="0" * 64))
        enqueue_event(s, settings.topics.models, ModelReady(
            job_id=done, tenant=tenant, base_model="m", adapter_uri=job.adapter_uri,
            files_sha256={}, scores=[]), job=job, event_id=f"{done}:model-ready")
        transition(s, s.get_one(Job, queued), S.queued, settings.topics)
        value = f"{_marker(tenant)} x".encode()
        offset = len(tenant)  # one record per tenant
        record = ConsumerRecord("aif.requests", 0, -1, offset, 1, 0, b"k", value, [], None, 1,
                                len(value), 0)
        # Signed by the tenant and made no job: its refusal is an event of the tenant's too.
        note_dead_letter(s, record, "data: bad", tenant,
                         status_topic=settings.topics.status(tenant), request=("urn:x", "r"))
        s.commit()
    assert client.post(f"/v1/jobs/{done}/publish", headers=auth).status_code == 200
    return {"tenant": tenant, "jobs": job_ids, "file_id": file_id, "raws": raws,
            "keys": [made.api_key_id, made.signing_key_id], "done": done}


def _mentions(world: dict[str, object]) -> list[str]:
    return [str(world["tenant"]), *world["jobs"], str(world["file_id"]), *world["keys"],
            _marker(str(world["tenant"]))]  # type: ignore[misc]


def _rows_mentioning(sessions: sessionmaker[Session], words: list[str]
                     ) -> dict[str, list[dict]]:
    """Every row of every table whose text mentions one of `words`."""
    found: dict[str, list[dict]] = {}
    with sessions() as s:
        for table in Base.metadata.sorted_tables:
            for row in s.execute(select(table)).mappings():
                flat = json.dumps(dict(row), default=repr)
                if any(w in flat for w in words):
                    found.setdefault(table.name, []).append(dict(row))
    return found


def _files_mentioning(root: Path, words: list[str]) -> list[Path]:
    return [p for p in root.rglob("*") if any(w in str(p) for w in words)
            or (p.is_file() and any(w.encode() in p.read_bytes() for w in words))]


def test_erasing_a_tenant_leaves_nothing_of_it_and_everything_of_the_other(
    sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    settings = Settings(home=tmp_path / "home")
    client = TestClient(create_app(sessions, settings))
    gone, kept = (_world(sessions, settings, client, t) for t in ("acme", "globex"))
    kept_rows = _rows_mentioning(sessions, _mentions(kept))
    kept_files = {p: p.read_bytes() for p in settings.home.rglob("*") if p.is_file()
                  and "globex" in str(p)}
    assert {"jobs", "job_transitions", "scores", "outbox", "files", "api_keys",
            "signing_keys", "dead_letters", "audit", "tenants"} <= set(kept_rows)

    erased = erase_tenant(sessions, settings, "acme")

    assert _files_mentioning(settings.home, _mentions(gone)) == []
    left = _rows_mentioning(sessions, _mentions(gone))
    assert set(left) == {"audit", "tenants", "outbox"}
    (tombstone,) = left["tenants"]
    assert tombstone["erased_at"] is not None
    (retired,) = left["outbox"]  # the handed-off job's announcement, nothing else
    event = CloudEvent.model_validate_json(retired["payload"])
    assert event.type == ModelRetired.TYPE and retired["topic"] == settings.topics.models("acme")
    assert ModelRetired.model_validate(event.data).job_id == gone["done"]
    assert ModelRetired.model_validate(event.data).reason == "tenant-erased"
    assert "requestid" not in event.model_dump() and "req-" not in retired["payload"]
    # The other tenant: every row and file as before.
    assert _rows_mentioning(sessions, _mentions(kept)) == kept_rows
    assert {p: p.read_bytes() for p in settings.home.rglob("*") if p.is_file()
            and "globex" in str(p)} == kept_files

    # One audit row lists what went: counts per table, sha256 per file, never content.
    with sessions() as s:
        (row,) = s.scalars(select(Audit).where(Audit.action == audit.Action.erase.value))
    assert row.tenant == "acme" and row.actor == audit.OPERATOR
    # outbox: the jobs' 10 events and the refusal of a record that made no job
    assert row.detail["rows"] == {"api_keys": 1, "dead_letters": 1, "files": 1, "jobs": 2,
                                  "job_transitions": 9, "outbox": 11, "scores": 1,
                                  "signing_keys": 1}
    assert row.detail["retired"] == [gone["done"]]
    # upload, adapter, checkpoint, samples, report, cached base scores of its own tasks
    assert len(row.detail["files_sha256"]) == 6
    assert erased.files == row.detail["files_sha256"]
    assert all(_marker("acme") not in json.dumps(a.detail) for a in s.scalars(select(Audit)))

    # The name stays taken, and the tenant's stored events create nothing again.
    with sessions() as s, pytest.raises(TenantError, match="erased"):
        create_tenant(s, "acme")
    for raw in gone["raws"]:  # type: ignore[attr-defined]
        with sessions() as s:
            result = accept(s, raw, settings.topics, require_signed=False)
            s.commit()
        assert result.outcome is Outcome.dead_letter
        assert result.reason.startswith("tenant-erased")
    with sessions() as s:
        assert s.scalars(select(Job.id).where(Job.tenant == "acme")).all() == []


def test_the_audit_log_refuses_updates_and_deletes(sessions: sessionmaker[Session]) -> None:
    with sessions() as s:
        audit.record(s, audit.Action.publish, actor="api:x", tenant="acme", job_id="j")
        s.commit()
    for statement in ("UPDATE audit SET actor = 'someone else'", "DELETE FROM audit"):
        with sessions() as s, pytest.raises(DBAPIError, match="append-only"):
            s.execute(text(statement))
            s.commit()
    with sessions() as s:
        assert [(a.actor, a.action) for a in s.scalars(select(Audit))] == [("api:x", "publish")]


def test_erasure_stops_a_running_stage_first(
    sessions: sessionmaker[Session], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A real stage process, watched by a real worker, is cancelled, stopped and waited for
    before the job's folder goes."""
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(STAGES), os.environ.get(
        "PYTHONPATH", "")]))
    settings = Settings(home=tmp_path / "home", lease_s=4)
    with sessions() as s:
        create_tenant(s, "acme")
        s.commit()
    raw = envelope(FineTuneRequested(recipe="grid-ticket-routing"), source="urn:t",
                   tenant="acme").to_bytes()
    with sessions() as s:
        job_id = accept(s, raw, settings.topics, require_signed=False).job_id
        transition(s, s.get_one(Job, job_id), S.queued, settings.topics)
        transition(s, s.get_one(Job, job_id), S.training, settings.topics)
        s.commit()
    worker = JobWorker(settings, sessions, get_launcher("local"))
    assert worker.leases.claim() == job_id
    job = worker.load(job_id)
    work = worker.steps.work_dir(job)
    spec = work / "spec.json"
    spec.write_text("{}")
    failed: list[BaseException] = []

    def watch() -> None:
        try:
            worker.runner.run(job, S.training, StageCommand("sleep_stage", spec,
                                                            distributed=False),
                              work / "training.log", work / "progress.jsonl")
        except BaseException as exc:
            failed.append(exc)

    watcher = threading.Thread(target=watch)
    watcher.start()
    deadline = time.monotonic() + 60
    ref = None
    # The stage may write its checkpoint before the worker has recorded the run: wait for both.
    while ref is None or not (work / "checkpoints" / "partial.bin").exists():
        assert time.monotonic() < deadline, (work / "training.log").read_text()
        time.sleep(0.1)
        with sessions() as s:
            ref = s.get_one(Job, job_id).run_ref
    assert get_launcher("local").attach(ref).poll() is None

    erased = erase_tenant(sessions, settings, "acme", timeout_s=30)

    assert get_launcher("local").attach(ref).poll() is not None  # the stage is gone
    watcher.join(30)
    # The worker learnt it at its heartbeat (cancelled) or from the stage's exit status.
    assert not watcher.is_alive() and isinstance(failed[0], LeaseLost | StageRunFailed)
    assert not work.exists() and not (settings.jobs_dir / "acme").exists()
    assert str(work / "checkpoints" / "partial.bin") in erased.files
    with sessions() as s:
        states = [a.detail["to_state"] for a in s.scalars(
            select(Audit).where(Audit.job_id == job_id, Audit.action == "state")
            .order_by(Audit.id))]
        assert s.get(Job, job_id) is None and s.get_one(Tenant, "acme").erased_at
        assert s.scalars(select(Outbox)).all() == []  # never handed off: nothing to retire
    assert states[-1] == "cancelled"
