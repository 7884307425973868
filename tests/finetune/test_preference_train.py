"""A DPO run through the training worker: the loop, validation, progress and the adapter are
SFT's, the loss and the reward figures DPO's."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

from events.recipe import Recipe
from finetune.checkpoint import CHECKPOINTS_DIR
from finetune.train import _cli
from stagefiles.jobspec import (
    PROGRESS_LOG,
    TRAINING_RESULT,
    ProgressLine,
    TrainingResult,
    TrainingSpec,
)

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
