"""The compute estimate counts what training processes: checked against the arithmetic, a
meta-device model and a real training run."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from transformers import AutoModelForCausalLM, PreTrainedTokenizerBase
from typer.testing import CliRunner

from aif.cli import app
from finetune.base_model import BaseModelError
from finetune.data import load_examples
from finetune.estimate import (
    DPO_LOOP_VS_SFT,
    REFERENCE_VS_SFT,
    Estimator,
    consumed,
    parameter_count,
    safetensors_parameter_count,
)
from finetune.preflight import build_report
from finetune.train import _cli
from stagefiles.compute import forward_flops, training_flops
from stagefiles.jobspec import TRAINING_RESULT, Throughput, TrainingResult, TrainingSpec
from stagefiles.preflight_report import Estimate

ROWS = [{"text": f"ticket {i} about {topic}", "label": label}
        for i, (topic, label) in enumerate(
            [("sparks", "emergency"), ("a bill", "accounts"), ("a meter", "metering")] * 6)]
SITE = Throughput(launcher="local", devices=1, tokens_per_s={"cpu": 100.0, "cuda": 1e4})


def test_whole_epochs_of_one_rank_count_every_row_exactly() -> None:
    lengths = [10, 20, 30, 40, 50]
    # batch 2: 3 micro-batches an epoch (the last one short), 2 steps of accumulation 2
    # (the second with the epoch's last micro-batch alone).
    done = consumed(lengths, batch_size=2, accumulation=2, ranks=1, max_steps=4)
    assert (done.micro_batches, done.examples, done.tokens) == (6, 10, 300)


def test_a_part_epoch_counts_full_micro_batches_at_the_mean_length() -> None:
    done = consumed([10, 20, 30, 40, 50], batch_size=2, accumulation=1, ranks=1, max_steps=5)
    assert (done.micro_batches, done.examples, done.tokens) == (5, 9, 270)  # 5 + 2 x 2 rows


def test_n_ranks_count_as_one_rank_accumulating_n_times() -> None:
    lengths = list(range(10, 26))  # 16 rows: 4 full batches of 4
    one = consumed(lengths, batch_size=4, accumulation=2, ranks=1, max_steps=3)
    two = consumed(lengths, batch_size=4, accumulation=1, ranks=2, max_steps=3)
    assert (one.examples, one.tokens) == (two.examples, two.tokens) == (24, 24 * 17.5)
    # 3 batches over 2 ranks: each rank 2 micro-batches an epoch, the 4th topped up.
    odd = consumed(lengths[:12], batch_size=4, accumulation=1, ranks=2, max_steps=1)
    assert (odd.micro_batches, odd.examples) == (1, 8)


def test_parameters_are_counted_without_loading_weights(tiny_model_dir: Path,
                                                        tmp_path: Path) -> None:
    loaded = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    assert parameter_count(str(tiny_model_dir), tmp_path) == loaded.num_parameters()
    # The shipped GGUF: its tensor table, no conversion (SmolLM2-135M, tied embeddings); only
    # its metadata (tokenizer, parameter count) is kept.
    assert parameter_count("smollm2-135m-instruct", tmp_path) == 134_515_008
    assert sorted(p.name for p in tmp_path.iterdir()) == ["content_hashes.json", "gguf-metadata"]
    with pytest.raises(BaseModelError, match="no such GGUF file"):
        parameter_count(str(tmp_path / "missing.gguf"), tmp_path)


@pytest.mark.parametrize("tied", [True, False])
def test_the_safetensors_headers_count_what_the_built_model_has(tmp_path: Path,
                                                               tied: bool) -> None:
    """Tied or not, one file or shards: the headers' count is the model's, or None (and the
    model is built) where they cannot say it exactly."""
    import torch
    from safetensors.torch import load_file, save_file
    from transformers import LlamaConfig, LlamaForCausalLM

    model = LlamaForCausalLM(LlamaConfig(
        vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=tied))
    whole, shards = tmp_path / "whole", tmp_path / "shards"
    model.save_pretrained(whole)
    model.save_pretrained(shards, max_shard_size="20KB")
    assert (shards / "model.safetensors.index.json").is_file()
    for folder in (whole, shards):
        assert safetensors_parameter_count(folder) == model.num_parameters()
        assert parameter_count(str(folder), tmp_path) == model.num_parameters()

    weights = load_file(whole / "model.safetensors")
    if tied:  # the output layer stored as well: dropped where the config says it is tied
        save_file({**weights, "lm_head.weight": weights["model.embed_tokens.weight"].clone()},
                  whole / "model.safetensors")
        assert safetensors_parameter_count(whole) == model.num_parameters()
        config = json.loads((whole / "config.json").read_text())
        del config["tie_word_embeddings"]  # and cannot be told where it does not say
        (whole / "config.json").write_text(json.dumps(config))
        assert safetensors_parameter_count(whole) is None
        assert parameter_count(str(whole), tmp_path) == LlamaForCausalLM(
            LlamaConfig.from_pretrained(whole)).num_parameters()  # Llama's default: untied
    else:  # a quantised tensor: the headers do not hold the parameter count
        save_file({**weights, "model.norm.weight": torch.zeros(16, dtype=torch.int8)},
                  whole / "model.safetensors")
        assert safetensors_parameter_count(whole) is None
    (whole / "model.safetensors").unlink()  # no safetensors checkpoint: the model is built
    assert safetensors_parameter_count(whole) is None
    assert parameter_count(str(whole), tmp_path) == LlamaForCausalLM(
        LlamaConfig.from_pretrained(whole)).num_parameters()


def test_the_estimate_in_the_report_and_its_summary(
    tmp_path: Path, make_recipe: Callable, write_jsonl: Callable,
    tokenizer: PreTrainedTokenizerBase,
) -> None:
    data = write_jsonl(tmp_path / "train.jsonl", ROWS)
    recipe = make_recipe(data, train={"max_steps": 10, "batch_size": 3})
    report = build_report(recipe, tokenizer, estimator=Estimator(1000, SITE, "cpu"))
    estimate = report.estimate
    assert estimate is not None
    lengths = [len(e) for e in (x["input_ids"] for x in load_examples(
        recipe.data, tokenizer, recipe.train.max_seq_len).train.examples)]
    assert estimate.steps == 10 and estimate.tokens == round(30 * sum(lengths) / len(lengths))
    assert estimate.flops == training_flops(1000, estimate.tokens)
    assert estimate.data_bytes == data.stat().st_size
    assert estimate.duration_s == pytest.approx(estimate.tokens / 100.0)
    assert estimate.device_hours == pytest.approx(estimate.duration_s / 3600)
    assert "site figure 100 tokens/s per cpu" in report.summary()
    assert f"estimate: {estimate.tokens:,} tokens in 10 steps" in report.summary()
    assert estimate.clause() in report.to_text()
    assert build_report(recipe, tokenizer).estimate is None


def test_a_measured_figure_wins_and_devices_multiply(
    tmp_path: Path, make_recipe: Callable, write_jsonl: Callable,
    tokenizer: PreTrainedTokenizerBase,
) -> None:
    recipe = make_recipe(write_jsonl(tmp_path / "train.jsonl", ROWS))
    hint = SITE.model_copy(update={"devices": 4, "measured_tokens_per_s": 50.0,
                                   "measured_job": "job-1"})
    estimate = build_report(recipe, tokenizer, estimator=Estimator(1000, hint, "cuda")).estimate
    assert estimate is not None and estimate.tokens_per_s == 200.0
    assert estimate.throughput_from == "measured by job job-1"
    assert estimate.device_hours == pytest.approx(estimate.tokens / 200.0 * 4 / 3600)


def test_a_dpo_estimate_counts_its_loop_rate_and_one_reference_pass_over_the_pairs(
    tmp_path: Path, make_recipe: Callable, write_jsonl: Callable,
    tokenizer: PreTrainedTokenizerBase,
) -> None:
    pairs = [{"prompt": f"Ticket {i}: {topic}\nTeam:", "chosen": f" {team}",
              "rejected": " unknown"}
             for i, (topic, team) in enumerate([("sparks", "emergency"), ("a bill", "accounts"),
                                                ("a meter", "metering")] * 4)]
    data = write_jsonl(tmp_path / "pairs.jsonl", pairs)

    def estimate(method: str) -> Estimate:
        recipe = make_recipe(data, data={"format": "preference"},
                             train={"method": method, "max_steps": 10, "batch_size": 3})
        found = build_report(recipe, tokenizer, estimator=Estimator(1000, SITE, "cpu")).estimate
        assert found is not None
        return found

    dpo, orpo = estimate("dpo"), estimate("orpo")
    assert dpo.tokens == orpo.tokens and dpo.steps == 10  # the loop's tokens: both answers
    recipe = make_recipe(data, data={"format": "preference"}, train={"method": "dpo"})
    reference = sum(e.trained_length for e in load_examples(
        recipe.data, tokenizer, recipe.train.max_seq_len).train.encoded)  # each pair once
    assert dpo.duration_s == pytest.approx(dpo.tokens / (100.0 * DPO_LOOP_VS_SFT)
                                           + reference / (100.0 * REFERENCE_VS_SFT))
    assert orpo.duration_s == pytest.approx(orpo.tokens / 100.0)  # no reference model
    assert dpo.tokens_per_s == pytest.approx(100.0 * DPO_LOOP_VS_SFT)
    assert dpo.flops == training_flops(1000, dpo.tokens) + forward_flops(1000, reference)
    assert forward_flops(1000, reference) == 2 * 1000 * reference
    assert f"reference pass over {reference:,} tokens" in dpo.clause()


def test_nothing_usable_has_no_estimate(
    tmp_path: Path, make_recipe: Callable, write_jsonl: Callable,
    tokenizer: PreTrainedTokenizerBase,
) -> None:
    recipe = make_recipe(write_jsonl(tmp_path / "train.jsonl", [{"text": "no label"}]))
    report = build_report(recipe, tokenizer, estimator=Estimator(1000, SITE, "cpu"))
    assert not report.usable and report.estimate is None


def test_training_processes_the_estimated_tokens(
    tmp_path: Path, make_recipe: Callable, write_jsonl: Callable,
    tokenizer: PreTrainedTokenizerBase,
) -> None:
    """18 rows in batches of 4 are 5 micro-batches an epoch; accumulating 2, an epoch is 3
    steps, the last with one micro-batch: 6 steps are two whole epochs."""
    recipe = make_recipe(write_jsonl(tmp_path / "train.jsonl", ROWS),
                         train={"max_steps": 6, "gradient_accumulation_steps": 2})
    estimate = build_report(recipe, tokenizer, estimator=Estimator(1000, SITE, "cpu")).estimate
    spec = tmp_path / "training_spec.json"
    TrainingSpec(job_id="t1", tenant="dev", recipe=recipe, work_dir=str(tmp_path / "job"),
                 model_cache_dir=str(tmp_path / "cache")).write(spec)
    assert _cli([str(spec)]) == 0
    result = TrainingResult.read(tmp_path / "job" / TRAINING_RESULT)
    assert estimate is not None and estimate.examples == 36
    assert (result.steps, result.train_tokens) == (estimate.steps, estimate.tokens)


def test_aif_preflight_shows_the_estimate_on_the_configured_launcher(
    tmp_path: Path, make_recipe: Callable, write_jsonl: Callable,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("AIF_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("AIF_ESTIMATE_TOKENS_PER_S__CPU", "7")
    recipe = make_recipe(write_jsonl(tmp_path / "train.jsonl", ROWS),
                         train={"num_processes": 2})
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe.model_dump(mode="json")))
    shown = CliRunner().invoke(app, ["preflight", str(path), "--json"])
    assert shown.exit_code == 0, shown.output
    estimate = json.loads(shown.output)["estimate"]
    assert (estimate["devices"], estimate["tokens_per_s"]) == (2, 14.0)
    assert estimate["throughput_from"] == "site figure 7 tokens/s per cpu"


def test_the_data_size_is_of_the_tenants_file_not_its_redacted_copy(
    tmp_path: Path, make_recipe: Callable, write_jsonl: Callable,
    tokenizer: PreTrainedTokenizerBase,
) -> None:
    rows = [*ROWS, {"text": "write to someone.long.name@example.org", "label": "accounts"}]
    data = write_jsonl(tmp_path / "train.jsonl", rows)
    recipe = make_recipe(data, data={"pii": "redact"})
    report = build_report(recipe, tokenizer, tmp_path / "work",
                          estimator=Estimator(1000, SITE, "cpu"))
    assert report.pii is not None and report.pii.redacted and report.estimate is not None
    copy = Path(report.pii.redacted[0].path)
    assert copy.stat().st_size != data.stat().st_size
    assert report.estimate.data_bytes == data.stat().st_size
