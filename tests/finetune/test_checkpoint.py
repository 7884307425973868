"""Checkpoints: kill -9 and resume, SIGTERM writes one and exits 4, broken ones are ignored."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from peft import PeftModel
from transformers import AutoModelForCausalLM

from events.recipe import Recipe
from finetune import checkpoint
from finetune.train import EXIT_STOPPED
from stagefiles.jobspec import PROGRESS_LOG, TRAINING_RESULT, ProgressLine, TrainingResult
from tests.finetune.test_train import REPO, ROWS, _spec

STEPS = 40


def _start(spec: Path, log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    with log.open("ab") as out:
        return subprocess.Popen([sys.executable, "-m", "finetune.train", str(spec)], cwd=REPO,
                                env=env, stdout=out, stderr=subprocess.STDOUT)


def _until(predicate: Callable[[], bool], proc: subprocess.Popen[bytes], what: str) -> None:
    deadline = time.monotonic() + 240
    while not predicate():
        assert proc.poll() is None, f"training ended before {what}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def _steps(job: Path) -> list[int]:
    text = (job / PROGRESS_LOG).read_text() if (job / PROGRESS_LOG).exists() else ""
    return [ProgressLine.model_validate_json(line).step for line in text.split()]


@pytest.fixture
def spec(tmp_path: Path, make_recipe: Callable[..., Recipe], write_jsonl: Callable) -> Path:
    data = write_jsonl(tmp_path / "train.jsonl", ROWS)
    return _spec(tmp_path, make_recipe(data, train={
        "max_steps": STEPS, "batch_size": 2, "logging_steps": 1, "checkpoint_steps": 5}))


@pytest.mark.training  # launches the training stage
def test_kill_9_mid_run_then_resume_continues_the_step_count(
    spec: Path, tmp_path: Path, tiny_model_dir: Path,
) -> None:
    job, log = tmp_path / "job", tmp_path / "train.log"
    first = _start(spec, log)
    _until(lambda: len(checkpoint.completed(job)) >= 2, first, "two checkpoints")
    first.send_signal(signal.SIGKILL)
    first.wait(30)
    resumed_from = int(checkpoint.completed(job)[-1].name.split("-")[1])
    assert 10 <= resumed_from < STEPS
    logged_before = len(_steps(job))

    second = _start(spec, log)
    assert second.wait(300) == 0, log.read_text()[-3000:]
    assert f"resuming from the checkpoint at step {resumed_from}" in log.read_text()
    # Steps after the checkpoint that the killed run had done are done again, from there on.
    assert _steps(job)[logged_before:] == list(range(resumed_from + 1, STEPS + 1))
    result = TrainingResult.read(job / TRAINING_RESULT)
    assert result.steps == STEPS
    assert len(checkpoint.completed(job)) <= checkpoint.KEEP
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    assert PeftModel.from_pretrained(base, result.adapter_dir) is not None


@pytest.mark.training  # launches the training stage
def test_sigterm_writes_a_checkpoint_and_exits_4(spec: Path, tmp_path: Path) -> None:
    job, log = tmp_path / "job", tmp_path / "train.log"
    proc = _start(spec, log)
    _until(lambda: len(_steps(job)) >= 2, proc, "two steps")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(120) == EXIT_STOPPED, log.read_text()[-3000:]
    latest = checkpoint.completed(job)[-1]
    stopped_at = int(latest.name.split("-")[1])
    assert stopped_at >= 2 and (latest / "adapter" / "adapter_model.safetensors").is_file()
    assert f"SIGTERM at step {stopped_at}" in log.read_text()
    assert not (job / TRAINING_RESULT).exists()


def test_a_checkpoint_without_its_marker_is_never_read(spec: Path, tmp_path: Path) -> None:
    job = tmp_path / "job"
    torn = job / checkpoint.CHECKPOINTS_DIR / "step-0000035"
    torn.mkdir(parents=True)
    (torn / "counters.json").write_text("{not json")  # as if killed while writing
    log = tmp_path / "train.log"
    proc = _start(spec, log)
    assert proc.wait(300) == 0, log.read_text()[-3000:]
    assert "resuming" not in log.read_text()
    assert _steps(job)[0] == 1
