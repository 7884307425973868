"""The serving-compatibility stage in its own process, on adapters a vLLM server refuses:
each is refused with the field, its value and the limit, before any model is loaded."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from recipes import load_recipe
from stagefiles.jobspec import ServingCheckSpec, ServingLimits, StageFailure

REPO = Path(__file__).resolve().parents[2]


def _adapter(base: Path, out: Path, **lora: object) -> Path:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base)
    get_peft_model(model, LoraConfig(r=8, lora_alpha=16, **lora)).save_pretrained(out)
    return out


def _run(base: Path, adapter: Path, tmp_path: Path, limits: ServingLimits
         ) -> tuple[int, StageFailure | None]:
    spec = tmp_path / "serving_check_spec.json"
    ServingCheckSpec(job_id="j", base_model_dir=str(base), adapter_dir=str(adapter),
                     limits=limits, recipe=load_recipe("grid-ticket-routing"),
                     evaluation_dir=str(tmp_path), stored_score=0.5, metric="acc",
                     sample_docs=10, tolerance=0.0, probe_prompts=["Hello"]).write(spec)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-m", "serving.check", str(spec)], env=env,
                          capture_output=True, timeout=300, check=False)
    return done.returncode, StageFailure.find(spec)


@pytest.mark.parametrize(("lora", "limits", "reason"), [
    ({"target_modules": ["q_proj"], "modules_to_save": ["lm_head"]}, ServingLimits(),
     "serving check: adapter_config.modules_to_save: ['lm_head'] is not loadable by the "
     "servers (vLLM refuses modules_to_save)"),
    ({"target_modules": ["q_proj"], "use_dora": True}, ServingLimits(),
     "serving check: adapter_config.use_dora: true is not loadable by the servers"),
    ({"target_modules": ["q_proj", "down_proj"]},
     ServingLimits(allowed_target_modules=["q_proj", "v_proj"]),
     "serving check: adapter_config.target_modules: ['down_proj'] not among the servers' "
     "['q_proj', 'v_proj']"),
    ({"target_modules": ["q_proj"]}, ServingLimits(max_lora_rank=1),
     "serving check: adapter_config.r: 8 is above the servers' max_lora_rank 1 "
     "(AIF_SERVING_LIMITS__MAX_LORA_RANK)"),
])
def test_adapters_a_server_cannot_load_are_refused_with_the_rule(
    tiny_model_dir: Path, tmp_path: Path, lora: dict, limits: ServingLimits, reason: str,
) -> None:
    adapter = _adapter(tiny_model_dir, tmp_path / "adapter", **lora)
    code, failure = _run(tiny_model_dir, adapter, tmp_path, limits)
    assert code == 2
    assert failure is not None and failure.kind == "final"
    assert failure.reason == reason


def test_a_broken_adapter_config_is_refused_without_quoting_it(
    tiny_model_dir: Path, tmp_path: Path,
) -> None:
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text('{"peft_type": "LORA", "secret-marker": 1')
    code, failure = _run(tiny_model_dir, adapter, tmp_path, ServingLimits())
    assert code == 2 and failure is not None
    assert failure.reason == ("serving check: the adapter or spec cannot be read "
                              "(JSONDecodeError)")
