"""Jobs of one tenant waiting in `evaluating` are scored by one evaluation run (one base
load), each into its own folder, recorded and gated on its own.

Real database (SQLite and PostgreSQL), real pre-flight, training and evaluation stages on
the tiny model through the local launcher.
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
import threading
import time
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from aif.db.models import Job, Score, utcnow
from aif.orchestrator import specs
from aif.orchestrator.intake import accept
from aif.orchestrator.worker import JobWorker
from aif.settings import Settings
from aif.stages import PREFLIGHT, Stage
from events.bus import envelope
from events.messages import CancelRequested, EventData, FineTuneRequested
from events.recipe import Recipe
from events.states import JobState
from stagefiles.jobspec import EVALUATION_RESULT, TRAINING_RESULT, EvaluationResult, TrainingResult
from tests.aif.conftest import local_worker


def _request(tiny: FineTuneRequested, **update: object) -> FineTuneRequested:
    """The tiny request trained for 3 steps, with `update` (eval/gate fields) applied."""
    recipe = tiny.recipe_inline
    assert recipe is not None
    recipe = recipe.model_copy(update={
        "train": recipe.train.model_copy(update={"max_steps": 3}),
        "eval": recipe.eval.model_copy(update=update.get("eval", {})),
        "gate": recipe.gate.model_copy(update=update.get("gate", {}))})
    return FineTuneRequested(recipe_inline=recipe)


def _accept(sessions: sessionmaker[Session], data: EventData, tenant: str) -> str | None:
    with sessions() as s:
        result = accept(s, envelope(data, source="urn:t", tenant=tenant).to_bytes(),
                        Settings().topics, require_signed=False)
        s.commit()
    return result.job_id


_TRAINED: dict[str, Path] = {}
"""Per test process, the work folder of the first job trained with each training section."""
_VALIDATED: dict[str, Path] = {}
"""Per test process, the work folder of the first job validated with each recipe."""


def _validate(w: JobWorker, job_id: str, recipe: Recipe) -> None:
    """`w.steps.validate`, with the pre-flight stage's report copied from the first job of
    the same recipe in this test process instead of the stage run again: the step freezes
    the recipe and admits the job from the report as always. The report names no file of
    the earlier test (checked), so the copy is the report the stage would write."""
    data = str(Path(w.settings.data_root or "") / "")
    key = recipe.model_dump_json().replace(data, "")
    done = _VALIDATED.get(key)
    report = None if done is None else done / PREFLIGHT.result_file
    if report is None or not report.is_file():
        w.steps.validate(w.load(job_id))
        _VALIDATED[key] = Path(w.load(job_id).work_dir or "")
        return
    assert str(done.parents[2]) not in report.read_text()  # that test's data and work
    run_stage = w.steps.runner.run_stage

    def copied(job: Job, expected: JobState, stage: Stage, spec_path: Path, **_: object) -> None:
        assert stage is PREFLIGHT
        shutil.copy(report, spec_path.parent / PREFLIGHT.result_file)

    w.steps.runner.run_stage = copied  # type: ignore[method-assign]
    try:
        w.steps.validate(w.load(job_id))
    finally:
        w.steps.runner.run_stage = run_stage  # type: ignore[method-assign]


def _trained(w: JobWorker, sessions: sessionmaker[Session], request: FineTuneRequested,
             tenant: str = "acme") -> str:
    """A job stored, validated and trained by `w`, left in `evaluating` with its lease free
    (as after a restart: waiting for a worker).

    These tests are about evaluation, so only the first job with a given recipe in this
    test process runs the pre-flight stage, and the first with a given training section the
    training stage; the next ones get a copy of the report (`_validate`), and of the
    adapter and result in their own folder (the stages have tests of their own). The copies
    save a pre-flight process (about 4 CPU-seconds) and a training process (about 10) per
    job, 19 and 16 of them in this module."""
    job_id = _accept(sessions, request, tenant)
    assert job_id is not None and request.recipe_inline is not None
    with sessions() as s:  # taken as `claim` takes one, without the older waiting jobs
        s.get_one(Job, job_id).lease_owner = w.owner
        s.commit()
    _validate(w, job_id, request.recipe_inline)
    w.steps.start_training(w.load(job_id))
    key = request.recipe_inline.train.model_dump_json()
    done = _TRAINED.get(key)
    if done is None or not (done / TRAINING_RESULT).is_file():
        w.steps.train(w.load(job_id))
        _TRAINED[key] = Path(w.load(job_id).work_dir or "")
    else:
        work = Path(w.load(job_id).work_dir or "")
        result = TrainingResult.read(done / TRAINING_RESULT)
        adapter = work / Path(result.adapter_dir).relative_to(done)
        shutil.copytree(result.adapter_dir, adapter)
        result.model_copy(update={"adapter_dir": str(adapter)}).write(work / TRAINING_RESULT)
        w.steps._move(job_id, JobState.evaluating, f"trained {result.steps} steps (a copy)",
                      adapter_uri=adapter.as_uri())
    assert w.load(job_id).state == JobState.evaluating
    w.leases.release(job_id)
    return job_id


def _tuned(sessions: sessionmaker[Session], job_id: str) -> dict[tuple[str, str], float]:
    with sessions() as s:
        return {(r.task, r.metric): r.tuned for r in s.scalars(
            select(Score).where(Score.job_id == job_id))}


def _alone(w: JobWorker, job: Job, out: Path) -> EvaluationResult:
    """The job's adapter scored by an evaluation run of its own."""
    work = Path(job.work_dir or "")
    spec = specs.evaluation_spec(job, Recipe.model_validate(job.recipe),
                                 TrainingResult.read(work / TRAINING_RESULT), out, w.settings)
    spec.write(out.with_suffix(".json"))
    subprocess.run([sys.executable, "-m", "evaluation.run", str(out.with_suffix(".json"))],
                   check=True, capture_output=True, timeout=300)
    return EvaluationResult.read(out / EVALUATION_RESULT)


@pytest.mark.store
def test_jobs_of_one_tenant_waiting_together_share_one_evaluation_run_up_to_the_cap(
    sessions: sessionmaker[Session], tmp_path: Path, tiny_request: FineTuneRequested,
    caplog: pytest.LogCaptureFixture
) -> None:
    w = local_worker(sessions, tmp_path, eval_batch_max=2)
    leader = _trained(w, sessions, _request(tiny_request))
    companion = _trained(w, sessions, _request(tiny_request, gate={"min_gain": 0.5}))
    beyond_cap = _trained(w, sessions, _request(tiny_request))

    assert w.leases.claim() == leader  # the oldest
    with caplog.at_level(logging.INFO, logger="aif.orchestrator.steps"):
        w.steps.evaluate(w.load(leader))
    assert f"evaluating 2 jobs with one base load: {leader}, {companion}" in caplog.text

    lead, other, left = w.load(leader), w.load(companion), w.load(beyond_cap)
    assert lead.state == JobState.handing_off and lead.gate_passed
    assert other.state == JobState.rejected and other.gate_passed is False  # its own gate
    assert "Failed: below min_gain" in (other.gate_reason or "")
    assert left.state == JobState.evaluating and left.lease_owner is None  # over the cap
    assert other.lease_owner is None  # let go once recorded
    # one stage process served both: its handle is on both jobs, its log in the leader's
    assert lead.run_ref and other.run_ref
    assert lead.run_ref["companions"] == [companion] and other.run_ref["leader"] == leader
    assert {k: v for k, v in other.run_ref.items() if k != "leader"} == {
        k: v for k, v in lead.run_ref.items() if k != "companions"}
    lead_work, other_work = Path(lead.work_dir or ""), Path(other.work_dir or "")
    assert (lead_work / "evaluation.log").is_file()
    assert not (other_work / "evaluation.log").exists()
    # each job's files in its own folder, its scores its adapter's, as alone
    for job in (lead, other):
        out = Path(job.work_dir or "") / "evaluation"
        assert {p.name for p in out.glob("lm_eval_*.json")} >= {
            "lm_eval_base.json", "lm_eval_tuned.json", "lm_eval_commands.json"}
        kept = EvaluationResult.read(out / EVALUATION_RESULT)
        assert _tuned(sessions, job.id) == {(m.task, m.metric): m.value for m in kept.tuned}
    commands = json.loads((other_work / "evaluation" / "lm_eval_commands.json").read_text())
    adapter = TrainingResult.read(other_work / TRAINING_RESULT).adapter_dir
    assert adapter.startswith(str(other_work)) and f"peft={adapter}" in " ".join(
        commands["tuned"])  # its own adapter was scored
    alone = _alone(w, other, tmp_path / "alone")
    assert _tuned(sessions, companion) == {(m.task, m.metric): m.value for m in alone.tuned}
    assert (json.loads((other_work / "evaluation" / "lm_eval_tuned.json").read_text())["results"]
            == json.loads((tmp_path / "alone" / "lm_eval_tuned.json").read_text())["results"])

    assert w.leases.claim() == beyond_cap  # the one left over: evaluated alone
    w.steps.evaluate(w.load(beyond_cap))
    run_ref = w.load(beyond_cap).run_ref
    assert run_ref and "companions" not in run_ref and run_ref["pid"] != lead.run_ref["pid"]


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_other_tenants_and_other_eval_settings_are_never_in_the_run(
    sessions: sessionmaker[Session], tmp_path: Path, tiny_request: FineTuneRequested,
    data_root: Path
) -> None:
    w = local_worker(sessions, tmp_path)
    leader = _trained(w, sessions, _request(tiny_request))
    other_settings = _trained(w, sessions, _request(tiny_request, eval={"limit": 10}))
    shutil.copytree(data_root / "acme", data_root / "beta")
    beta = FineTuneRequested.model_validate_json(_request(tiny_request).model_dump_json(
    ).replace(str(data_root / "acme"), str(data_root / "beta")))
    other_tenant = _trained(w, sessions, beta, tenant="beta")

    assert w.leases.claim() == leader
    w.steps.evaluate(w.load(leader))
    run_ref = w.load(leader).run_ref
    assert run_ref and "companions" not in run_ref
    for job_id in (other_settings, other_tenant):
        job = w.load(job_id)
        assert job.state == JobState.evaluating and job.lease_owner is None
        assert not _tuned(sessions, job_id) and "leader" not in (job.run_ref or {})


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_a_companion_cancelled_during_the_run_drops_out_and_the_others_complete(
    sessions: sessionmaker[Session], tmp_path: Path, tiny_request: FineTuneRequested
) -> None:
    w = local_worker(sessions, tmp_path)
    leader = _trained(w, sessions, _request(tiny_request))
    companion = _trained(w, sessions, _request(tiny_request))
    assert w.leases.claim() == leader
    evaluating = threading.Thread(target=w.steps.evaluate, args=(w.load(leader),))
    evaluating.start()
    deadline = time.monotonic() + 120
    while "leader" not in (w.load(companion).run_ref or {}):  # the shared run started
        assert time.monotonic() < deadline and evaluating.is_alive()
        time.sleep(0.2)
    assert _accept(sessions, CancelRequested(job_id=companion), "acme") == companion
    evaluating.join(timeout=300)
    assert not evaluating.is_alive()
    lead, other = w.load(leader), w.load(companion)
    assert lead.state == JobState.handing_off and _tuned(sessions, leader)
    assert other.state == JobState.cancelled and not _tuned(sessions, companion)
    assert other.lease_owner is None and other.gate_passed is None


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_an_adapter_failing_its_probe_fails_its_own_job_only(
    sessions: sessionmaker[Session], tmp_path: Path, tiny_request: FineTuneRequested
) -> None:
    from safetensors.torch import load_file, save_file

    w = local_worker(sessions, tmp_path)
    leader = _trained(w, sessions, _request(tiny_request))
    zeroed = _trained(w, sessions, _request(tiny_request))
    adapter = Path(TrainingResult.read(
        Path(w.load(zeroed).work_dir or "") / TRAINING_RESULT).adapter_dir)
    weights = load_file(adapter / "adapter_model.safetensors")
    save_file({k: v * 0 if "lora_B" in k else v for k, v in weights.items()},
              adapter / "adapter_model.safetensors")  # loads, changes no logit
    assert w.leases.claim() == leader
    w.steps.evaluate(w.load(leader))
    lead, other = w.load(leader), w.load(zeroed)
    assert lead.state == JobState.handing_off and _tuned(sessions, leader)
    assert other.state == JobState.failed and not _tuned(sessions, zeroed)
    assert other.reason.startswith("evaluation failed: AdapterNotAppliedError: ADAPTER NOT")
    assert other.lease_owner is None


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_a_shared_run_failing_for_the_infrastructure_backs_off_every_job(
    sessions: sessionmaker[Session], tmp_path: Path, tiny_request: FineTuneRequested
) -> None:
    w = local_worker(sessions, tmp_path)
    leader = _trained(w, sessions, _request(tiny_request))
    companion = _trained(w, sessions, _request(tiny_request))
    blocked = Path(w.load(companion).work_dir or "") / "evaluation" / EVALUATION_RESULT
    blocked.mkdir(parents=True)  # its result cannot be written: an OSError, retryable
    assert w.leases.claim() == leader
    w.run_job(leader)
    for job_id in (leader, companion):
        job = w.load(job_id)
        assert job.state == JobState.evaluating and job.attempts == 1, job.reason
        assert job.reason.startswith("attempt 1 of 3 failed, next in 10 s: evaluation "
                                     "failed: IsADirectoryError"), job.reason
        assert job.run_ref is None and job.lease_owner is None and job.next_attempt_at
        assert not _tuned(sessions, job_id)


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_after_a_crash_each_job_of_a_shared_run_is_re_adopted_and_recorded_once(
    sessions: sessionmaker[Session], tmp_path: Path, tiny_request: FineTuneRequested,
    db_url: str
) -> None:
    w = local_worker(sessions, tmp_path)
    leader = _trained(w, sessions, _request(tiny_request))
    companion = _trained(w, sessions, _request(tiny_request))
    crashing = subprocess.Popen([sys.executable, "-c", (
        "import sys; from pathlib import Path; from aif.db.session import session_factory; "
        "from tests.aif.conftest import local_worker; "
        f"w = local_worker(session_factory({db_url!r}), Path({str(tmp_path)!r})); "
        "job = w.leases.claim(); w.steps.evaluate(w.load(job))")])
    try:
        deadline = time.monotonic() + 120
        while "leader" not in (w.load(companion).run_ref or {}):  # the shared run started
            assert time.monotonic() < deadline and crashing.poll() is None
            time.sleep(0.2)
    finally:
        crashing.kill()  # the orchestrator dies; the stage process goes on
        crashing.wait()
    with sessions() as s:  # its leases expire
        s.execute(update(Job).values(lease_expires_at=utcnow() - timedelta(seconds=1)))
        s.commit()
    shared = w.load(leader).run_ref
    for job_id in (leader, companion):  # each re-adopted by any worker, one by one
        assert w.leases.claim() == job_id
        w.steps.evaluate(w.load(job_id))
        job = w.load(job_id)
        assert job.state == JobState.handing_off and len(_tuned(sessions, job_id)) == 2
        assert job.run_ref and shared and job.run_ref["pid"] == shared["pid"]  # attached
    with sessions() as s:
        assert len(s.scalars(select(Score).where(Score.job_id == companion)).all()) == 2
    assert not (Path(w.load(companion).work_dir or "") / "evaluation.log").exists()


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_a_leader_cancelled_during_the_run_stops_it_and_lets_the_companions_go(
    sessions: sessionmaker[Session], tmp_path: Path, tiny_request: FineTuneRequested
) -> None:
    w = local_worker(sessions, tmp_path)
    leader = _trained(w, sessions, _request(tiny_request))
    companion = _trained(w, sessions, _request(tiny_request))
    assert w.leases.claim() == leader
    evaluating = threading.Thread(target=w.run_job, args=(leader,))
    evaluating.start()
    deadline = time.monotonic() + 120
    while "leader" not in (w.load(companion).run_ref or {}):
        assert time.monotonic() < deadline and evaluating.is_alive()
        time.sleep(0.2)
    assert _accept(sessions, CancelRequested(job_id=leader), "acme") == leader
    evaluating.join(timeout=120)
    assert not evaluating.is_alive()
    other = w.load(companion)
    assert w.load(leader).state == JobState.cancelled
    assert other.state == JobState.evaluating and other.attempts == 0  # no attempt used up
    assert other.run_ref is None and other.lease_owner is None  # evaluated again, afresh
    assert not _tuned(sessions, companion)


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_jobs_finishing_training_together_are_evaluated_in_one_run(
    sessions: sessionmaker[Session], tmp_path: Path, tiny_request: FineTuneRequested
) -> None:
    """The first to finish waits (its lease let go) while the other still trains; the other,
    finishing, takes it along. A job waits once only, and not at all when nothing trains."""
    w = local_worker(sessions, tmp_path, eval_batch_wait_s=300)
    first = _trained(w, sessions, _request(tiny_request))
    request = _request(tiny_request)
    second = _accept(sessions, request, "acme")
    assert second is not None and request.recipe_inline is not None
    with sessions() as s:
        s.get_one(Job, second).lease_owner = w.owner
        s.commit()
    _validate(w, second, request.recipe_inline)
    w.steps.start_training(w.load(second))
    assert w.load(second).state == JobState.training

    with sessions() as s:  # the first job's worker goes on from training to evaluation
        s.get_one(Job, first).lease_owner = w.owner
        s.commit()
    w.run_job(first)
    waiting = w.load(first)
    assert waiting.state == JobState.evaluating and waiting.lease_owner is None
    assert waiting.attempts == 0 and waiting.next_attempt_at is not None
    assert "waiting up to 300 s to be evaluated together" in (waiting.reason or "")
    assert w.leases.claim() is None or w.load(first).lease_owner is None  # not before its time

    w.steps.train(w.load(second))  # the second finishes: nothing else trains, so no wait
    w.steps.evaluate(w.load(second))
    lead, other = w.load(second), w.load(first)
    assert lead.run_ref and lead.run_ref["companions"] == [first]
    assert other.run_ref and other.run_ref["leader"] == second
    assert lead.state in (JobState.handing_off, JobState.rejected)
    assert other.state in (JobState.handing_off, JobState.rejected) and _tuned(sessions, first)


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_a_job_waits_for_companions_once_only(
    sessions: sessionmaker[Session], tmp_path: Path, tiny_request: FineTuneRequested
) -> None:
    from aif.orchestrator import batches

    w = local_worker(sessions, tmp_path, eval_batch_wait_s=300)
    job_id = _trained(w, sessions, _request(tiny_request))
    other = _accept(sessions, _request(tiny_request), "acme")
    assert other is not None
    with sessions() as s:
        s.execute(update(Job).where(Job.id == other).values(
            state=JobState.training.value, recipe=s.get_one(Job, job_id).recipe))
        s.commit()
        job = s.get_one(Job, job_id)
        lead = batches.member(job, Path(job.work_dir or ""))
        assert batches.should_wait(w.settings, s, job, lead)
        job.next_attempt_at = utcnow() - timedelta(seconds=1)  # it waited already
        assert not batches.should_wait(w.settings, s, job, lead)
        job.next_attempt_at, job.attempts = None, 1  # backing off after a failure
        assert not batches.should_wait(w.settings, s, job, lead)
        job.attempts = 0
        off = Settings(home=tmp_path, eval_batch_wait_s=0)  # type: ignore[call-arg]
        assert not batches.should_wait(off, s, job, lead)
