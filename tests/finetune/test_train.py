"""The worker as the orchestrator runs it, and each way it can fail."""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from aif.launchers.base import StageCommand
from events.recipe import ModelSection, Recipe
from finetune.build import mixed_precision, native_bf16
from finetune.train import EXIT_BAD_INPUT, EXIT_DIVERGED, NonFiniteLossError, _cli, check_finite
from stagefiles.jobspec import (
    PROGRESS_LOG,
    TRAINING_RESULT,
    ProgressLine,
    TrainingResult,
    TrainingSpec,
)

REPO = Path(__file__).resolve().parents[2]
ROWS = [
    {"text": f"ticket {i} about {topic}", "label": label}
    for i, (topic, label) in enumerate(
        [("sparks", "emergency"), ("a bill", "accounts"), ("a meter", "metering")] * 6
    )
]


def _spec(tmp_path: Path, recipe: Recipe) -> Path:
    spec = TrainingSpec(
        job_id="t1",
        tenant="dev",
        recipe=recipe,
        work_dir=str(tmp_path / "job"),
        model_cache_dir=str(tmp_path / "cache"),
    )
    path = tmp_path / "training_spec.json"
    spec.write(path)
    return path


def _launch(spec: Path, num_processes: int) -> subprocess.CompletedProcess[str]:
    """The training stage as the launchers start it (each multi-process run on a free port)."""
    command = StageCommand("finetune.train", spec, num_processes=num_processes).argv()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300, check=False
    )


@pytest.mark.training  # launches the training stage
def test_two_process_run_writes_safetensors_adapter_result_and_progress(
    tmp_path: Path, make_recipe: Callable[..., Recipe], write_jsonl: Callable, tiny_model_dir: Path
) -> None:
    data = write_jsonl(tmp_path / "train.jsonl", ROWS)
    spec = _spec(tmp_path, make_recipe(data, train={"max_steps": 5, "logging_steps": 2}))
    run = _launch(spec, num_processes=2)
    assert run.returncode == 0, run.stderr[-3000:]

    job = tmp_path / "job"
    result = TrainingResult.read(job / TRAINING_RESULT)
    adapter = Path(result.adapter_dir)
    assert result.steps == 5 and math.isfinite(result.final_loss) and result.train_tokens > 0
    assert result.processes == 2 and result.tokens_per_s > 0 and result.peak_memory_mb > 0
    assert result.base_model_dir == str(tiny_model_dir.resolve())
    names = {p.name for p in adapter.iterdir()}
    assert {"adapter_model.safetensors", "adapter_config.json", "README.md", "SHA256SUMS",
            "training_spec.json", "loss_curve.json"} <= names
    card = (adapter / "README.md").read_text()
    data_sha = hashlib.sha256((tmp_path / "train.jsonl").read_bytes()).hexdigest()
    assert f"base_model: {tiny_model_dir}" in card and data_sha in card
    assert "| max_steps | 5 |" in card and "peft " in card
    curve = json.loads((adapter / "loss_curve.json").read_text())
    assert [p["step"] for p in curve] == [2, 4, 5]
    manifest = dict(reversed(line.split("  ")) for line in
                    (adapter / "SHA256SUMS").read_text().splitlines())
    assert set(manifest) == names - {"SHA256SUMS"}
    assert not [n for n in names if n.endswith((".bin", ".pt", ".pth", ".pkl"))]
    assert result.files_sha256 == {
        n: hashlib.sha256((adapter / n).read_bytes()).hexdigest() for n in names
    }

    lines = [ProgressLine.model_validate_json(x) for x in (job / PROGRESS_LOG).read_text().split()]
    assert [p.step for p in lines] == [2, 4, 5]
    assert all(p.stage == "training" and p.total_steps == 5 for p in lines)
    assert lines[-1].loss == pytest.approx(result.final_loss) and lines[-1].eta_s == 0

    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    tuned = PeftModel.from_pretrained(base, adapter)
    with torch.no_grad():
        assert tuned(torch.tensor([[1, 2, 3]])).logits.shape[-1] == base.config.vocab_size


@pytest.mark.training  # launches the training stage
def test_one_and_two_processes_train_the_same_adapter(
    tmp_path: Path, make_recipe: Callable[..., Recipe], write_jsonl: Callable
) -> None:
    """Scaling out changes where micro-batches run, not what is learnt: 2 processes with one
    micro-batch each per step equal 1 process accumulating two (same data order, seed)."""
    data = write_jsonl(tmp_path / "train.jsonl", ROWS[:16])
    recipe = make_recipe(data, train={"max_steps": 3, "learning_rate": 1e-2})
    recipe = recipe.model_copy(update={"lora": recipe.lora.model_copy(update={"dropout": 0.0})})
    results = {}
    for processes, accumulation in ((1, 2), (2, 1)):
        train = recipe.train.model_copy(update={"gradient_accumulation_steps": accumulation})
        run_dir = tmp_path / f"p{processes}"
        run_dir.mkdir()
        spec = _spec(run_dir, recipe.model_copy(update={"train": train}))
        run = _launch(spec, num_processes=processes)
        assert run.returncode == 0, run.stderr[-3000:]
        results[processes] = TrainingResult.read(run_dir / "job" / TRAINING_RESULT)
    one, two = results[1], results[2]
    assert (one.processes, two.processes) == (1, 2)
    assert one.steps == two.steps == 3 and one.train_tokens == two.train_tokens
    assert one.final_loss == pytest.approx(two.final_loss, rel=1e-4)
    weights = [load_file(Path(r.adapter_dir) / "adapter_model.safetensors") for r in (one, two)]
    assert weights[0].keys() == weights[1].keys()
    for name, tensor in weights[0].items():
        torch.testing.assert_close(tensor, weights[1][name], rtol=1e-4, atol=1e-5, msg=name)
    # The run did learn: LoRA's B matrices start at zero.
    assert any(t.abs().max() > 0 for n, t in weights[0].items() if "lora_B" in n)


def test_bad_data_exits_2_naming_the_line(
    tmp_path: Path,
    make_recipe: Callable[..., Recipe],
    write_jsonl: Callable,
    capsys: pytest.CaptureFixture[str],
) -> None:
    data = write_jsonl(tmp_path / "train.jsonl", [*ROWS[:2], {"text": "no label"}])
    spec = _spec(tmp_path, make_recipe(data))
    assert _cli([str(spec)]) == EXIT_BAD_INPUT
    assert "line 3: missing column 'label'" in capsys.readouterr().err
    assert not (tmp_path / "job" / TRAINING_RESULT).exists()


def _with_lora(recipe: Recipe, **changes: object) -> Recipe:
    return recipe.model_copy(update={"lora": recipe.lora.model_copy(update=changes)})


@pytest.mark.skipif(torch.cuda.is_available(), reason="the error is for nodes without CUDA")
def test_qlora_without_cuda_exits_2_with_the_way_out(
    tmp_path: Path, make_recipe: Callable[..., Recipe], write_jsonl: Callable,
    capsys: pytest.CaptureFixture[str],
) -> None:
    data = write_jsonl(tmp_path / "train.jsonl", ROWS)
    spec = _spec(tmp_path, _with_lora(make_recipe(data), quantize_4bit=True))
    assert _cli([str(spec)]) == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert "lora.quantize_4bit (QLoRA) needs a CUDA GPU" in err
    assert "set lora.quantize_4bit: false" in err
    assert not (tmp_path / "job" / TRAINING_RESULT).exists()


def test_merged_model_equals_base_plus_adapter(
    tmp_path: Path, make_recipe: Callable[..., Recipe], write_jsonl: Callable,
    tiny_model_dir: Path,
) -> None:
    data = write_jsonl(tmp_path / "train.jsonl", ROWS)
    recipe = make_recipe(data, train={"max_steps": 3, "learning_rate": 1e-2,
                                      "gradient_checkpointing": True, "precision": "fp32"})
    spec = _spec(tmp_path, _with_lora(recipe, save_merged=True))
    assert _cli([str(spec)]) == 0
    result = TrainingResult.read(tmp_path / "job" / TRAINING_RESULT)
    merged_dir = Path(result.merged_dir)
    assert (merged_dir / "model.safetensors").is_file()
    assert result.merged_files_sha256["model.safetensors"] == hashlib.sha256(
        (merged_dir / "model.safetensors").read_bytes()).hexdigest()
    ids = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
        plain = base(ids).logits
        tuned = PeftModel.from_pretrained(base, result.adapter_dir)(ids).logits
        merged = AutoModelForCausalLM.from_pretrained(merged_dir)(ids).logits
    torch.testing.assert_close(merged, tuned, rtol=1e-4, atol=1e-5)
    assert (merged - plain).abs().max() > 1e-4  # the merge carried the training


def test_unusable_spec_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _cli([]) == EXIT_BAD_INPUT
    assert "usage" in capsys.readouterr().err
    assert _cli([str(tmp_path / "missing.json")]) == EXIT_BAD_INPUT
    (tmp_path / "bad.json").write_text(json.dumps({"job_id": "x"}))
    assert _cli([str(tmp_path / "bad.json")]) == EXIT_BAD_INPUT
    assert "unusable training spec" in capsys.readouterr().err


def test_diverged_loss_exits_3_without_an_adapter(
    tmp_path: Path,
    make_recipe: Callable[..., Recipe],
    write_jsonl: Callable,
    tiny_model_dir: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    broken = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    with torch.no_grad():
        broken.model.norm.weight.fill_(math.nan)
    broken.save_pretrained(tmp_path / "broken")
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(tmp_path / "broken")
    recipe = make_recipe(write_jsonl(tmp_path / "train.jsonl", ROWS))
    recipe = recipe.model_copy(update={"model": ModelSection(base=str(tmp_path / "broken"))})
    assert _cli([str(_spec(tmp_path, recipe))]) == EXIT_DIVERGED
    assert "loss is nan at step 1" in capsys.readouterr().err
    assert not (tmp_path / "job" / TRAINING_RESULT).exists()
    assert not (tmp_path / "job" / "adapter").exists()


def test_exploding_gradient_exits_3_without_an_adapter(
    tmp_path: Path, make_recipe: Callable[..., Recipe], write_jsonl: Callable,
    capsys: pytest.CaptureFixture[str],
) -> None:
    recipe = make_recipe(write_jsonl(tmp_path / "train.jsonl", ROWS),
                         train={"grad_norm_limit": 1e-9})
    assert _cli([str(_spec(tmp_path, recipe))]) == EXIT_DIVERGED
    assert re.search(r"gradient norm is \S+ at step 1 \(limit 1e-09\)", capsys.readouterr().err)
    assert not (tmp_path / "job" / "adapter").exists()


@pytest.mark.parametrize("loss", [math.nan, math.inf, -math.inf])
def test_non_finite_loss_stops_the_run(loss: float) -> None:
    with pytest.raises(NonFiniteLossError, match="at step 7"):
        check_finite(loss, 7)


def test_finite_loss_passes() -> None:
    check_finite(2.5, 1)


def test_validation_loss_is_logged_every_eval_steps_and_recorded(
    tmp_path: Path, make_recipe: Callable[..., Recipe], write_jsonl: Callable
) -> None:
    recipe = make_recipe(write_jsonl(tmp_path / "train.jsonl", ROWS),
                         data={"validation_split": 0.25}, train={"eval_steps": 2})
    assert _cli([str(_spec(tmp_path, recipe))]) == 0
    result = TrainingResult.read(tmp_path / "job" / TRAINING_RESULT)
    lines = [ProgressLine.model_validate_json(x)
             for x in (tmp_path / "job" / PROGRESS_LOG).read_text().split()]
    validation = [p for p in lines if p.stage == "validation"]
    assert [p.step for p in validation] == [2, 4]
    assert result.validation_loss is not None and math.isfinite(result.validation_loss)
    assert validation[-1].loss == pytest.approx(result.validation_loss)
    adapter = Path(result.adapter_dir)
    assert f"validation loss {result.validation_loss:.4f}" in (adapter / "README.md").read_text()
    assert [p["step"] for p in json.loads((adapter / "loss_curve.json").read_text())] == [2, 4]


def test_precision_names_map_to_accelerate() -> None:
    assert mixed_precision("fp32") == "no" and mixed_precision("bf16") == "bf16"
    assert mixed_precision("auto") == ("bf16" if native_bf16() else "no")


def test_native_bf16_reads_the_hardware() -> None:
    """auto's choice follows the node: on a CPU, the instruction sets /proc/cpuinfo lists."""
    if torch.cuda.is_available():
        assert native_bf16() == torch.cuda.is_bf16_supported()
        return
    flags = set(re.findall(r"\S+", " ".join(
        line for line in Path("/proc/cpuinfo").read_text().splitlines()
        if line.startswith("flags"))))
    assert native_bf16() == bool(flags & {"avx512_bf16", "amx_bf16"})


@pytest.mark.training  # launches the training stage twice
def test_bf16_autocast_trains_near_fp32_and_keeps_the_adapter_fp32(
    tmp_path: Path, make_recipe: Callable[..., Recipe], write_jsonl: Callable
) -> None:
    """train.precision bf16 (auto's pick on nodes with bf16 instructions) runs the matmuls in
    bf16: the same run as fp32 ends near the same loss, not at it, with fp32 weights."""
    data = write_jsonl(tmp_path / "train.jsonl", ROWS)
    results = {}
    for precision in ("fp32", "bf16"):
        recipe = make_recipe(data, train={"max_steps": 3, "learning_rate": 1e-2,
                                          "precision": precision})
        run_dir = tmp_path / precision
        run_dir.mkdir()
        run = _launch(_spec(run_dir, _with_lora(recipe, dropout=0.0)), num_processes=1)
        assert run.returncode == 0, run.stderr[-3000:]
        results[precision] = result = TrainingResult.read(run_dir / "job" / TRAINING_RESULT)
        assert result.precision == precision
        weights = load_file(Path(result.adapter_dir) / "adapter_model.safetensors")
        assert {t.dtype for t in weights.values()} == {torch.float32}
    fp32, bf16 = results["fp32"].final_loss, results["bf16"].final_loss
    assert bf16 == pytest.approx(fp32, rel=0.05) and bf16 != fp32
