"""Achieved FLOP/s of the training loop against a matmul roofline measured on this machine.

The loop's useful work per real token, for LoRA on frozen weights (issue 16's rule: 4 x the
matmul parameters per token plus attention): 4 x the matmul parameters of the transformer
body (forward 2x, backward through the frozen weights 2x, no weight gradients), 4 x the
LoRA matrices' parameters (their weight gradients are not counted), attention (forward 4 x
context x hidden per layer, backward twice that) and the vocabulary projection at the
positions carrying loss only (4 x vocabulary x hidden). The roofline is torch's own matmul
on the same shapes (one micro-batch of tokens against each projection, forward and
backward) with the trainer's thread count (`finetune.build._use_node_cores`), in the same run.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

import torch
from transformers import PretrainedConfig


@dataclass(frozen=True)
class TokenMix:
    """What the loop's cost depends on, measured on the data it trains on."""

    tokens_per_micro_batch: float
    mean_context: float  # tokens a token attends to, on average (causal, per example)
    loss_fraction: float  # tokens carrying loss / real tokens


def _projections(config: PretrainedConfig) -> list[tuple[int, int]]:
    """(in, out) of each matmul of one decoder layer."""
    d, inter = config.hidden_size, config.intermediate_size
    head_dim = getattr(config, "head_dim", None) or d // config.num_attention_heads
    q, kv = config.num_attention_heads * head_dim, config.num_key_value_heads * head_dim
    return [(d, q), (d, kv), (d, kv), (q, d), (d, inter), (d, inter), (inter, d)]


def flops_per_token(config: PretrainedConfig, mix: TokenMix, lora_rank: int = 0) -> float:
    """Useful FLOPs per real token; `lora_rank` > 0 adds a LoRA of that rank on every
    projection (target_modules all-linear)."""
    layers, d = config.num_hidden_layers, config.hidden_size
    body = layers * sum(i * o for i, o in _projections(config))
    lora = layers * sum(lora_rank * (i + o) for i, o in _projections(config))
    attention = layers * 12 * mix.mean_context * d
    head = 4 * config.vocab_size * d * mix.loss_fraction
    return 4 * (body + lora) + attention + head


def matmul_roofline(config: PretrainedConfig, tokens: int, seconds: float = 3.0,
                    dtype: torch.dtype = torch.float32) -> float:
    """FLOP/s of `dtype` matmuls (the trainer's: float32, or bfloat16 under bf16 autocast)
    of `tokens` rows through each projection's forward and input-gradient shapes, repeated
    for about `seconds`, on as many threads as the trainer uses (one process: all cores
    this process may run on)."""
    torch.set_num_threads(len(os.sched_getaffinity(0)))
    shapes = [(tokens, i, o) for i, o in _projections(config)]
    shapes += [(tokens, o, i) for i, o in _projections(config)]  # gradients w.r.t. inputs
    operands = [(torch.randn(m, k, dtype=dtype), torch.randn(k, n, dtype=dtype))
                for m, k, n in shapes]
    per_pass = sum(2 * m * k * n for m, k, n in shapes)
    for a, b in operands:  # warm up the kernels and caches
        a @ b
    passes, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        for a, b in operands:
            a @ b
        passes += 1
    return passes * per_pass / (time.perf_counter() - started)
