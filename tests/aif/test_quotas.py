"""Per-tenant quotas on a real database, and the real worker refusing a job over one."""

from __future__ import annotations

import threading
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from pydantic import ValidationError
from sqlalchemy.orm import Session, sessionmaker

from aif.db.models import Job, utcnow
from aif.launchers.slurm import SlurmConfig
from aif.orchestrator.throughput import Measured, measure, throughput
from aif.orchestrator.worker import JobWorker
from aif.quotas import Limit, limits, refusal, set_quota, usage
from aif.settings import QuotaLimits, Settings
from aif.tenants import TenantError, create_tenant
from events.messages import FineTuneRequested
from events.states import JobState
from recipes import load_recipe
from stagefiles.compute import training_flops
from stagefiles.jobspec import TrainingResult
from stagefiles.preflight_report import Estimate
from tests.aif.conftest import local_worker, store_trusted

pytestmark = pytest.mark.store  # admission counts and locks in the job store

S = JobState


def _tenant(sessions: sessionmaker[Session], name: str = "acme", **quota: float | None) -> None:
    with sessions() as s:
        create_tenant(s, name)
        if quota:
            set_quota(s, name, quota)
        s.commit()


def _estimate(tokens: int, device_hours: float, data_bytes: int | None = None) -> Estimate:
    return Estimate(steps=10, examples=80, tokens=tokens, parameters=1000,
                    flops=training_flops(1000, tokens), data_bytes=data_bytes, launcher="local",
                    device="cpu", devices=1, tokens_per_s=100.0, throughput_from="site figure",
                    duration_s=device_hours * 3600, device_hours=device_hours)


def _measured(tokens: int, device_hours: float, *, launcher: str = "local",
              tokens_per_s: float = 100.0, processes: int = 1) -> dict:
    return Measured(tokens=tokens, steps=10, wall_s=device_hours * 3600 / processes,
                    processes=processes, device_hours=device_hours, flops=None,
                    tokens_per_s=tokens_per_s, launcher=launcher,
                    base_model="smollm2-135m-instruct").model_dump(mode="json")


def _job(s: Session, tenant: str, state: JobState, *, estimate: Estimate | None = None,
         measured: dict | None = None, created_at: datetime | None = None) -> Job:
    number = s.query(Job).count()
    at = created_at or utcnow()
    job = Job(id=f"job-{number}", tenant=tenant, request_source="urn:t",
              request_id=f"r{number}", request_sha256="x", request={"data": {}},
              state=state.value, estimate=estimate and estimate.model_dump(mode="json"),
              measured=measured, created_at=at, updated_at=at + timedelta(seconds=number))
    s.add(job)
    s.flush()
    return job


def test_a_tenants_own_limit_wins_over_the_site_default_until_cleared(
    sessions: sessionmaker[Session],
) -> None:
    _tenant(sessions)
    site = QuotaLimits(concurrent_jobs=3, monthly_tokens=1000)
    with sessions() as s:
        assert limits(s, "acme", QuotaLimits()) == {}
        set_quota(s, "acme", {"concurrent_jobs": 1, "dataset_bytes": 2048})
        s.commit()
        assert limits(s, "acme", site) == {
            "concurrent_jobs": Limit(1, "tenant limit"),
            "dataset_bytes": Limit(2048, "tenant limit"),
            "monthly_tokens": Limit(1000, "site default"),
        }
        set_quota(s, "acme", {"concurrent_jobs": None})  # the others stay
        s.commit()
        found = limits(s, "acme", site)
        assert found["concurrent_jobs"] == Limit(3, "site default")
        assert found["dataset_bytes"] == Limit(2048, "tenant limit")
        with pytest.raises(TenantError, match="no such tenant"):
            set_quota(s, "nobody", {"concurrent_jobs": 1})
        with pytest.raises(ValidationError):
            set_quota(s, "acme", {"monthly_device_hours": -1.0})


def test_usage_counts_the_tenants_own_jobs_of_this_month(
    sessions: sessionmaker[Session],
) -> None:
    now = utcnow()
    with sessions() as s:
        _job(s, "acme", S.queued, estimate=_estimate(100, 0.5))
        _job(s, "acme", S.training, estimate=_estimate(10, 0.125))
        # Once trained, what training measured counts, not the estimate.
        _job(s, "acme", S.succeeded, estimate=_estimate(100, 0.5), measured=_measured(80, 0.25))
        _job(s, "acme", S.failed, estimate=_estimate(40, 0.125))  # stopped without a result
        _job(s, "acme", S.rejected, measured=_measured(5, 0.0))  # by its gate, after training
        _job(s, "acme", S.rejected, estimate=_estimate(999, 9.0))  # before training
        _job(s, "acme", S.validating)
        _job(s, "acme", S.succeeded, measured=_measured(10**6, 99.0),
             created_at=now.replace(day=1) - timedelta(days=1))  # last month
        _job(s, "globex", S.queued, estimate=_estimate(10**6, 99.0))
        s.commit()
        used = usage(s, "acme", now)
        assert (used.running_jobs, used.tokens) == (2, 235)
        assert used.device_hours == pytest.approx(1.0)
        assert usage(s, "acme", now, excluding="job-0").running_jobs == 1


def test_a_job_over_a_quota_is_refused_with_the_numbers(
    sessions: sessionmaker[Session],
) -> None:
    _tenant(sessions, monthly_tokens=300, monthly_device_hours=1.0, dataset_bytes=100)
    with sessions() as s:
        _job(s, "acme", S.queued, estimate=_estimate(100, 0.625))
        new = _job(s, "acme", S.validating)
        s.commit()
        new_id = new.id
        fits = refusal(s, new, _estimate(200, 0.375, data_bytes=100), QuotaLimits())
        s.rollback()
        assert fits is None
        reason = refusal(s, new, _estimate(250, 0.5, data_bytes=200), QuotaLimits())
        s.rollback()
    assert reason is not None
    assert reason.split("; ") == [
        "quota: training data is 200 bytes (tenant limit 100 bytes of dataset size)",
        "quota: needs 250 tokens, 200 left this month (tenant limit 300 tokens a month)",
        "quota: needs 0.5 device-h, 0.38 left this month (tenant limit 1 device-h a month)",
    ]
    with sessions() as s:  # a site default says so
        job = s.get_one(Job, new_id)
        site = QuotaLimits(concurrent_jobs=1)
        assert refusal(s, job, None, site) == (
            "quota: needs 1 concurrent job, 1 already queued or running (site default 1 "
            "concurrent jobs)")


def test_a_second_admission_waits_for_the_first_to_commit(
    sessions: sessionmaker[Session],
) -> None:
    _tenant(sessions, concurrent_jobs=1)
    with sessions() as s:
        first_id, second_id = _job(s, "acme", S.validating).id, _job(s, "acme", S.validating).id
        s.commit()
    answers: list[str | None] = []

    def admit_second() -> None:
        with sessions() as s:
            answers.append(refusal(s, s.get_one(Job, second_id), None, QuotaLimits()))
            s.rollback()

    with sessions() as first:
        job = first.get_one(Job, first_id)
        assert refusal(first, job, None, QuotaLimits()) is None  # holds the tenant's lock
        second = threading.Thread(target=admit_second)
        second.start()
        second.join(timeout=2.0)
        assert second.is_alive() and not answers  # waiting, not counting the free slot
        job.state = S.queued
        first.commit()
    second.join(timeout=60)
    assert answers == ["quota: needs 1 concurrent job, 1 already queued or running (tenant "
                       "limit 1 concurrent jobs)"]


def test_the_next_estimate_uses_the_tenants_own_measured_throughput(
    sessions: sessionmaker[Session], tmp_path: Path,
) -> None:
    settings = Settings(home=tmp_path, estimate_tokens_per_s={"cpu": 123.0})
    recipe = load_recipe("grid-ticket-routing")
    with sessions() as s:
        site = throughput(settings, recipe, s, "acme")
        assert (site.launcher, site.devices, site.measured_tokens_per_s) == ("local", 1, None)
        assert site.tokens_per_s == {"cpu": 123.0, "cuda": 20_000.0}
        own = _job(s, "acme", S.succeeded, measured=_measured(100, 0.1, tokens_per_s=300.0,
                                                             processes=2))
        _job(s, "acme", S.succeeded, measured=_measured(100, 0.1, launcher="slurm"))
        _job(s, "globex", S.succeeded, measured=_measured(100, 0.1, tokens_per_s=999.0))
        s.commit()
        learnt = throughput(settings, recipe, s, "acme")
        assert (learnt.measured_tokens_per_s, learnt.measured_job) == (150.0, own.id)
        assert throughput(settings, recipe, s, "globex").measured_tokens_per_s == 999.0
    slurm = Settings(home=tmp_path, launcher="slurm", slurm=SlurmConfig(nodes=2, gpus_per_node=4))
    assert throughput(slurm, recipe).devices == 8


def test_measured_compute_of_a_training_result() -> None:
    result = TrainingResult(adapter_dir="a", base_model_dir="b", steps=6, final_loss=1.0,
                            train_tokens=5000, wall_s=1800.0, processes=2, tokens_per_s=4.0,
                            files_sha256={})
    recipe = load_recipe("grid-ticket-routing")
    measured = measure(result, recipe, _estimate(4000, 1.0).model_dump(), "local")
    assert (measured.tokens, measured.device_hours) == (5000, 1.0)
    assert measured.flops == training_flops(1000, 5000)
    assert measure(result, recipe, None, "local").flops is None


def _claimed_jobs(sessions: sessionmaker[Session], tmp_path: Path,
                  request: FineTuneRequested, count: int, **quota: float
                  ) -> list[tuple[JobWorker, str]]:
    """`count` stored jobs of tenant acme (with `quota`), each claimed by its own worker."""
    _tenant(sessions, **quota)
    assert request.recipe_inline is not None
    data = {"recipe_inline": request.recipe_inline.model_dump(mode="json")}
    ids = [store_trusted(sessions, **data) for _ in range(count)]
    workers = [local_worker(sessions, tmp_path) for _ in ids]
    assert [w.leases.claim() for w in workers] == ids
    return list(zip(workers, ids, strict=True))


def test_a_second_concurrent_job_over_a_limit_of_one_is_rejected(
    sessions: sessionmaker[Session], tmp_path: Path, tiny_request: FineTuneRequested,
) -> None:
    (a, first), (b, second) = _claimed_jobs(sessions, tmp_path, tiny_request, 2,
                                            concurrent_jobs=1)
    a.steps.validate(a.load(first))
    b.run_job(second)
    queued, refused = a.load(first), b.load(second)
    assert queued.state == S.queued and queued.estimate["tokens"] > 0
    assert "estimate: " in queued.reason and queued.estimate["launcher"] == "local"
    assert refused.state == S.rejected and refused.estimate is None
    assert refused.reason.endswith("quota: needs 1 concurrent job, 1 already queued or "
                                   "running (tenant limit 1 concurrent jobs)")
    assert refused.preflight["estimate"]["tokens"] == queued.estimate["tokens"]


def test_two_jobs_admitted_at_once_take_one_free_slot(
    sessions: sessionmaker[Session], tmp_path: Path, tiny_request: FineTuneRequested,
) -> None:
    claimed = _claimed_jobs(sessions, tmp_path, tiny_request, 2, concurrent_jobs=1)
    errors: list[BaseException] = []

    def validate(worker: JobWorker, job_id: str) -> None:
        try:
            worker.steps.validate(worker.load(job_id))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=validate, args=pair) for pair in claimed]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not errors
    states = {w.load(job_id).state for w, job_id in claimed}
    assert states == {S.queued, S.rejected}


def test_a_job_over_the_monthly_tokens_is_rejected_before_training(
    sessions: sessionmaker[Session], tmp_path: Path, tiny_request: FineTuneRequested,
) -> None:
    [(w, job_id)] = _claimed_jobs(sessions, tmp_path, tiny_request, 1, monthly_tokens=10)
    w.run_job(job_id)
    job = w.load(job_id)
    needed = job.preflight["estimate"]["tokens"]
    assert job.state == S.rejected
    assert job.reason.endswith(f"quota: needs {needed:,} tokens, 10 left this month "
                               "(tenant limit 10 tokens a month)")
    assert job.run_ref is None and not (Path(job.work_dir) / "training_spec.json").exists()
