"""Training compute, counted one way for the pre-flight estimate, quotas and the AI-Act pack.

A dense transformer spends about 2N floating-point operations per token on the forward pass
and 4N on the backward pass (N parameters). LoRA skips the weight gradients of the frozen
base, so its true cost lies nearer 4N per token; `training_flops` still counts 6N, the
conventional figure (Kaplan et al., 2020), because an estimate that quotas and a regulatory
comparison rely on should err high, never low.
"""

from __future__ import annotations

FLOPS_PER_PARAM_TOKEN = 6

GPAI_MODIFICATION_SHARE = 1 / 3
"""A modification whose training compute exceeds this share of the original model's makes
its author the provider of a new general-purpose AI model (Commission guidelines on GPAI
model obligations, 2025)."""


def training_flops(params: int, tokens: int) -> float:
    """Floating-point operations to train on `tokens` tokens (all of them, prompt included:
    each passes through the whole model) of a model with `params` parameters."""
    if params < 0 or tokens < 0:
        raise ValueError("params and tokens must not be negative")
    return float(FLOPS_PER_PARAM_TOKEN) * params * tokens


def forward_flops(params: int, tokens: int) -> float:
    """Floating-point operations of a forward pass without gradients over `tokens` tokens
    (DPO's reference log-probabilities): the forward third of `training_flops`."""
    return training_flops(params, tokens) / FLOPS_PER_PARAM_TOKEN * 2


def share_of_base(fine_tune_flops: float, base_training_flops: float) -> float:
    """The fine-tune's compute as a fraction of the base model's own training compute."""
    if base_training_flops <= 0:
        raise ValueError("the base model's training compute must be positive")
    return fine_tune_flops / base_training_flops
