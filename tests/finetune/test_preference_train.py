"""A DPO run through the training worker: the loop, validation, progress and the adapter are
SFT's, the loss and the reward figures DPO's; reference log-probabilities scored once before
the loop; and a run that starts from a registered adapter (`train.init_from`)."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, get_peft_model
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from events.recipe import Recipe
from finetune.checkpoint import CHECKPOINTS_DIR
from finetune.train import _cli
from stagefiles.jobspec import (
    PROGRESS_LOG,
    TRAINING_RESULT,
    ProgressLine,
    StageFailure,
    TrainingResult,
    TrainingSpec,
)
from tests.finetune.test_train import _launch

PAIRS = [{"prompt": f"Ticket {i}: {topic}\nTeam:", "chosen": f" {team}", "rejected": " unknown"}
         for i, (topic, team) in enumerate([("sparks", "emergency"), ("a bill", "accounts"),
                                            ("a meter", "metering")] * 4)]


def test_a_dpo_run_logs_rewards_validates_and_saves_an_adapter(
        tmp_path: Path, make_recipe: Callable[..., Recipe], write_jsonl: Callable) -> None:
    recipe = make_recipe(write_jsonl(tmp_path / "pairs.jsonl", PAIRS),
                         data={"format": "preference", "validation_split": 0.25},
                         train={"method": "dpo", "max_steps": 4, "logging_steps": 2,
                                "eval_steps": 2, "learning_rate": 1e-2, "checkpoint_steps": 2})
    spec = tmp_path / "training_spec.json"
    TrainingSpec(job_id="t1", tenant="dev", recipe=recipe, work_dir=str(tmp_path / "job"),
                 model_cache_dir=str(tmp_path / "cache")).write(spec)
    assert _cli([str(spec)]) == 0

    lines = [ProgressLine.model_validate_json(x)
             for x in (tmp_path / "job" / PROGRESS_LOG).read_text().splitlines()]
    training = [p for p in lines if p.stage == "training"]
    assert [p.step for p in training] == [2, 4]
    assert training[0].loss is not None and training[0].loss > 0
    for p in training:
        assert p.reward_margin is not None and math.isfinite(p.reward_margin)
        assert p.reward_accuracy is not None and 0.0 <= p.reward_accuracy <= 1.0
    assert training[-1].reward_margin > 0  # the adapter has moved towards the chosen answers
    validation = [p for p in lines if p.stage == "validation"]
    assert [p.step for p in validation] == [2, 4]
    result = TrainingResult.read(tmp_path / "job" / TRAINING_RESULT)
    assert result.steps == 4 and result.validation_loss == validation[-1].loss
    assert (Path(result.adapter_dir) / "adapter_model.safetensors").is_file()
    curve = json.loads((Path(result.adapter_dir) / "loss_curve.json").read_text())
    assert [sorted(point) for point in curve] == [
        ["loss", "reward_accuracy", "reward_margin", "step"]] * 2
    assert [p.name for p in (tmp_path / "job" / CHECKPOINTS_DIR).iterdir()] == ["step-0000002"]
    assert result.reference_s is not None and result.reference_s > 0  # once, outside the loop


def _registered_adapter(tiny_model_dir: Path, folder: Path) -> dict[str, torch.Tensor]:
    """An adapter of rank 2 that has moved off the base (as an SFT job leaves one)."""
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir),
                           LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(std=0.5)
    model.save_pretrained(folder)
    return load_file(folder / "adapter_model.safetensors")


def _dpo_spec(tmp_path: Path, recipe: Recipe, init_adapter_dir: str | None) -> Path:
    spec = tmp_path / "training_spec.json"
    TrainingSpec(job_id="t1", tenant="dev", recipe=recipe, work_dir=str(tmp_path / "job"),
                 model_cache_dir=str(tmp_path / "cache"),
                 init_adapter_dir=init_adapter_dir).write(spec)
    return spec


def test_a_dpo_run_from_a_registered_adapter_trains_it_on_against_the_base(
        tmp_path: Path, tiny_model_dir: Path, make_recipe: Callable[..., Recipe],
        write_jsonl: Callable) -> None:
    start = _registered_adapter(tiny_model_dir, tmp_path / "registered")
    recipe = make_recipe(write_jsonl(tmp_path / "pairs.jsonl", PAIRS),
                         data={"format": "preference"},
                         train={"method": "dpo", "max_steps": 2, "logging_steps": 1,
                                "learning_rate": 1e-6, "init_from": "dev/sft:1"})
    assert _cli([str(_dpo_spec(tmp_path, recipe, str(tmp_path / "registered")))]) == 0

    first = ProgressLine.model_validate_json(
        (tmp_path / "job" / PROGRESS_LOG).read_text().splitlines()[0])
    # Step 1 scores the starting adapter against the base: a fresh adapter would give 0.
    assert first.reward_margin is not None and abs(first.reward_margin) > 1e-4
    adapter = Path(TrainingResult.read(tmp_path / "job" / TRAINING_RESULT).adapter_dir)
    assert json.loads((adapter / "adapter_config.json").read_text())["r"] == 2  # its shape
    assert "Trained on from: registered model `dev/sft:1`" in (adapter / "README.md").read_text()
    trained = load_file(adapter / "adapter_model.safetensors")
    assert trained.keys() == start.keys()
    moved = [not torch.equal(trained[k], start[k]) for k in start]
    assert any(moved)  # trained on, from where it was (a tiny learning rate: still close)
    assert all(torch.allclose(trained[k], start[k], atol=1e-3) for k in start)


def test_a_starting_adapter_the_node_cannot_read_stops_the_run_naming_the_field(
        tmp_path: Path, make_recipe: Callable[..., Recipe], write_jsonl: Callable) -> None:
    recipe = make_recipe(write_jsonl(tmp_path / "pairs.jsonl", PAIRS),
                         data={"format": "preference"},
                         train={"method": "dpo", "init_from": "dev/sft:1"})
    spec = _dpo_spec(tmp_path, recipe, str(tmp_path / "not-mounted"))
    assert _cli([str(spec)]) == 2
    failure = StageFailure.find(spec)
    assert failure is not None
    assert failure.reason == ("train.init_from dev/sft:1: its adapter (adapter_config.json) "
                              "is not readable on this node")


@pytest.mark.training  # launches the training stage
def test_one_and_two_processes_train_the_same_dpo_adapter(
        tmp_path: Path, make_recipe: Callable[..., Recipe], write_jsonl: Callable) -> None:
    """Each rank scores its share of the pairs' reference once and the table is summed, so
    2 processes with one micro-batch each per step look up what 1 process accumulating two
    does, and learn the same adapter (same data order and seed). 4 validation pairs: each
    rank scores 2, so no rank's share is topped up with a repeat and the means agree."""
    recipe = make_recipe(write_jsonl(tmp_path / "pairs.jsonl", PAIRS),
                         data={"format": "preference", "validation_split": 1 / 3},
                         train={"method": "dpo", "max_steps": 3, "batch_size": 2,
                                "learning_rate": 1e-2, "warmup_ratio": 0.0})
    recipe = recipe.model_copy(update={"lora": recipe.lora.model_copy(update={"dropout": 0.0})})
    results = {}
    for processes, accumulation in ((1, 2), (2, 1)):
        train = recipe.train.model_copy(update={"gradient_accumulation_steps": accumulation})
        run_dir = tmp_path / f"p{processes}"
        run_dir.mkdir()
        spec = _dpo_spec(run_dir, recipe.model_copy(update={"train": train}), None)
        run = _launch(spec, num_processes=processes)
        assert run.returncode == 0, run.stderr[-3000:]
        assert "reference log-probabilities of 12 pairs" in run.stderr
        results[processes] = TrainingResult.read(run_dir / "job" / TRAINING_RESULT)
    one, two = results[1], results[2]
    assert (one.processes, two.processes) == (1, 2)
    assert one.final_loss == pytest.approx(two.final_loss, rel=1e-4)
    assert one.final_loss < 0.69  # it learnt: a fresh adapter's DPO loss is log 2
    assert one.validation_loss == pytest.approx(two.validation_loss, rel=1e-4)
    weights = [load_file(Path(r.adapter_dir) / "adapter_model.safetensors") for r in (one, two)]
    for name, tensor in weights[0].items():
        torch.testing.assert_close(tensor, weights[1][name], rtol=1e-4, atol=1e-5, msg=name)
    assert any(t.abs().max() > 0 for n, t in weights[0].items() if "lora_B" in n)
