"""The training loop's FLOP count (`benchmarks.roofline`), by issue 16's rule: 4 x the matmul
parameters per token (frozen projections and LoRA's matrices) plus attention, and the
vocabulary projection at loss positions only."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig

from benchmarks.roofline import TokenMix, flops_per_token, matmul_roofline
from benchmarks.train_throughput import _lora_rank, _matmul_dtype, _median, with_precision
from recipes import load_recipe

# SmolLM2-135M's shapes: 30 layers, hidden 576, 9 query and 3 key/value heads of 64, MLP 1536.
CONFIG = LlamaConfig(hidden_size=576, intermediate_size=1536, num_attention_heads=9,
                     num_key_value_heads=3, num_hidden_layers=30, vocab_size=49152)
MIX = TokenMix(tokens_per_micro_batch=370.0, mean_context=24.0, loss_fraction=0.05)


def test_flops_per_token_counts_projections_lora_attention_and_loss_positions() -> None:
    projections = 576 * 576 * 2 + 576 * 192 * 2 + 576 * 1536 * 3  # q, o; k, v; gate, up, down
    lora = 16 * ((576 + 576) * 2 + (576 + 192) * 2 + (576 + 1536) * 3)
    attention = 12 * 24.0 * 576
    expected = 30 * (4 * projections + 4 * lora + attention) + 4 * 49152 * 576 * 0.05
    assert flops_per_token(CONFIG, MIX, lora_rank=16) == pytest.approx(expected)
    assert flops_per_token(CONFIG, MIX) == pytest.approx(expected - 30 * 4 * lora)


def test_flop_count_refuses_a_lora_on_some_projections_only() -> None:
    recipe = load_recipe("grid-ticket-routing")
    assert _lora_rank(recipe) == recipe.lora.r
    some = recipe.model_copy(update={"lora": recipe.lora.model_copy(
        update={"target_modules": ["q_proj", "v_proj"]})})
    with pytest.raises(SystemExit, match="all-linear"):
        _lora_rank(some)


def test_the_roofline_runs_in_the_trainers_matmul_dtype() -> None:
    """Under bf16 autocast the trainer's matmuls are bf16, so its roofline is bf16's."""
    recipe = load_recipe("grid-ticket-routing")
    pinned = {p: with_precision(recipe, p) for p in ("fp32", "bf16")}
    assert _matmul_dtype(pinned["fp32"]) is torch.float32
    assert _matmul_dtype(pinned["bf16"]) is torch.bfloat16
    tiny = LlamaConfig(hidden_size=64, intermediate_size=128, num_attention_heads=4,
                       num_key_value_heads=2, num_hidden_layers=1, vocab_size=128)
    for dtype in (torch.float32, torch.bfloat16):
        assert matmul_roofline(tiny, tokens=32, seconds=0.05, dtype=dtype) > 0


def test_figures_are_medians_over_rounds_and_unmeasured_ones_stay_none() -> None:
    assert _median([3.0, 1.0, 2.0]) == 2.0
    assert _median([None, None]) is None  # reference_s of an SFT run, every round
