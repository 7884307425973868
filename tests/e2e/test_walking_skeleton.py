"""One request from Kafka to the leaderboard on real parts: broker, model, lm-eval, browser.

Takes a few minutes on a 2-core CPU: the GGUF conversion, a short LoRA run, two lm-eval runs
inside the job and one more through the `lm_eval` command line for parity.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select

from aif.db.models import Job, Score
from aif.db.session import session_factory
from aif.follow import wait_for_job
from aif.service import Service
from aif.settings import Settings
from evaluation.harness import cli_command
from events.bus import KafkaConfig
from events.client import request_finetune
from events.envelope import job_id_for
from events.messages import PUBLIC_LABEL, JobStatusChanged, ModelReady
from events.recipe import HyperparameterOverrides
from events.states import JobState
from events.topics import Topics
from stagefiles.jobspec import EvaluationSpec, TrainingResult
from tests.aif.conftest import signing_key
from tests.conftest import free_port

pytestmark = pytest.mark.e2e

MAX_STEPS = 25
"""The loss is below 0.3 from step 20 on; the recipe's 60 steps would cost 35 more steps of
real training for a test whose subject is the path, not the quality (benchmarks/real_data)."""
EVAL_LIMIT = 100
"""Documents per task (the guard has 66): the gain over the base is large enough to pass the
paired gate on 100 of the 200, and each of the three lm-eval runs costs 40% less."""


@pytest.fixture(scope="module")
def finished_job(broker: str, tmp_path_factory: pytest.TempPathFactory):
    home = tmp_path_factory.mktemp("aif-home")
    topics = Topics(f"e2e{free_port()}")
    settings = Settings(
        home=home, kafka=KafkaConfig(bootstrap_servers=broker), topic_prefix=topics.prefix,
        max_poll_interval_ms=3000, session_timeout_ms=3000, web_port=free_port(),
    )
    key = signing_key(session_factory(settings.db_url), "e2e")
    with pytest.MonkeyPatch.context() as env, Service(settings) as service:
        # The longest unit of the suite: under xdist (one thread per process) its stages get
        # every core, so that it does not end last and alone. Its OpenMP threads sleep when
        # they wait: spinning on cores that other tests' processes hold cost this training a
        # third more CPU time (and wall time) in a check under busy loops (docs/testing.md).
        env.setenv("OMP_NUM_THREADS", str(os.cpu_count() or 1))
        env.setenv("AIF_TRAIN_THREADS", str(os.cpu_count() or 1))
        env.setenv("OMP_WAIT_POLICY", "PASSIVE")
        event = request_finetune(
            settings.kafka, topics=topics, tenant="e2e", source="urn:test:e2e",
            recipe="grid-ticket-routing", overrides=HyperparameterOverrides(max_steps=MAX_STEPS,
                                                                   eval_limit=EVAL_LIMIT),
            signing_key=key, labels={PUBLIC_LABEL: "true"},  # so the open page lists it
        )
        job_id = job_id_for("e2e", event.source, event.id)
        # Until the final status and the outcome events it promises (model.ready travels
        # on another topic and may be read before or after that status).
        events = wait_for_job(settings.kafka, topics, "e2e", job_id, timeout_s=2400,
                              grace_s=60).events
        html = httpx.get(service.url, timeout=30).text
        browser_dom = _dump_dom(service.url)
    yield settings, job_id, events, html, browser_dom


def _dump_dom(url: str) -> str:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.fail("Debian's chromium is not installed (.ci/run installs it)")
    out = subprocess.run(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
         "--no-first-run", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", "--user-data-dir=/tmp/aif-e2e-chromium", "--dump-dom", url],
        capture_output=True, text=True, timeout=120, check=True,
    )
    return out.stdout


def test_job_succeeds_through_every_state(finished_job) -> None:
    _, _, events, _, _ = finished_job
    states = [e.state for e in events if isinstance(e, JobStatusChanged)]
    assert states == [JobState.validating, JobState.queued, JobState.training,
                      JobState.evaluating, JobState.handing_off, JobState.succeeded]


def test_model_ready_event_carries_the_adapter_and_its_checksums(finished_job) -> None:
    _, _, events, _, _ = finished_job
    (ready,) = [e for e in events if isinstance(e, ModelReady)]
    adapter = Path(ready.adapter_uri.removeprefix("file://"))
    assert "adapter_model.safetensors" in ready.files_sha256
    for name, digest in ready.files_sha256.items():
        assert hashlib.sha256((adapter / name).read_bytes()).hexdigest() == digest
    assert not list(adapter.glob("*.bin"))


def test_adapter_loads_with_plain_peft_in_a_fresh_process(finished_job) -> None:
    settings, job_id, _, _, _ = finished_job
    result = TrainingResult.read(_job_dir(settings, job_id) / "training_result.json")
    code = (
        "import sys; from transformers import AutoModelForCausalLM; from peft import PeftModel\n"
        "m = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(sys.argv[1]), "
        "sys.argv[2])\n"
        "print(sum(p.numel() for n, p in m.named_parameters() if 'lora_' in n))"
    )
    out = subprocess.run([sys.executable, "-c", code, result.base_model_dir, result.adapter_dir],
                         capture_output=True, text=True, timeout=300, check=True)
    assert int(out.stdout.strip().splitlines()[-1]) > 0


def test_stored_scores_equal_the_lm_eval_command_line(finished_job, tmp_path: Path) -> None:
    settings, job_id, _, _, _ = finished_job
    work = _job_dir(settings, job_id)
    spec = EvaluationSpec.read(work / "evaluation_spec.json")
    with session_factory(settings.db_url)() as s:
        stored = {(r.task, r.metric): r for r in s.scalars(select(Score).where(
            Score.job_id == job_id))}
        job = s.get_one(Job, job_id)
        assert job.gate_passed is True
    assert stored, "no scores stored"
    out = subprocess.run(cli_command(spec, spec.adapter_dir, tmp_path), capture_output=True,
                         text=True, timeout=900, check=True)
    (results_file,) = tmp_path.rglob("results_*.json")
    cli = json.loads(results_file.read_text())["results"]
    for (task, metric), row in stored.items():
        assert cli[task][f"{metric},none"] == row.tuned
        assert _printed_score(out.stdout, task, metric) == pytest.approx(row.tuned, abs=5e-5)
    gate = stored[(spec.recipe.gate.task, spec.recipe.gate.metric)]
    assert gate.tuned > gate.base


def test_leaderboard_page_lists_the_model(finished_job) -> None:
    _, job_id, _, html, browser_dom = finished_job
    assert f'data-job-id="{job_id}"' in html
    assert job_id in browser_dom and "grid_ticket_routing" in browser_dom


def _printed_score(table: str, task: str, metric: str) -> float:
    """The value column of the `lm_eval` results table row for task and metric.

    The table names a task on its first row only, and drops trailing zeros (0.9500 -> 0.95).
    """
    current = ""
    for line in table.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 7:
            continue
        current = cells[0] or current
        if current == task and cells[4] == metric:
            return float(cells[6])
    raise AssertionError(f"no {task}/{metric} row in the lm_eval output:\n{table}")


def _job_dir(settings: Settings, job_id: str) -> Path:
    return settings.jobs_dir / "e2e" / job_id
