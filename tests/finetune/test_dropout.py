"""FastDropout: nn.Dropout's distribution and RNG behaviour with a cheaper mask."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from peft import LoraConfig, get_peft_model
from torch import nn
from torch.utils.checkpoint import checkpoint
from transformers import AutoModelForCausalLM

from finetune.dropout import FastDropout, use_fast_dropout


def test_drops_p_of_the_elements_and_keeps_the_mean() -> None:
    torch.manual_seed(0)
    x = torch.ones(1000, 1000)
    y = FastDropout(0.05).train()(x)
    dropped = float((y == 0).float().mean())
    assert dropped == pytest.approx(0.05, abs=0.001)  # 4.6 sigma of a million draws
    assert torch.unique(y).tolist() == [0.0, pytest.approx(1 / 0.95, rel=1e-4)]
    assert float(y.mean()) == pytest.approx(1.0, abs=0.002)


def test_masks_follow_torch_seed() -> None:
    x, dropout = torch.ones(64, 64), FastDropout(0.5).train()
    torch.manual_seed(1)
    first, second = dropout(x), dropout(x)
    torch.manual_seed(1)
    assert torch.equal(dropout(x), first)  # set_seed, a checkpoint's RNG state
    assert not torch.equal(first, second)  # a fresh mask each call


def test_eval_mode_and_p_zero_pass_the_input_through() -> None:
    x = torch.randn(8, 8)
    assert FastDropout(0.5).eval()(x) is x
    assert FastDropout(0.0).train()(x) is x


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gradient_is_the_scaled_mask(dtype: torch.dtype) -> None:
    x = torch.ones(32, 32, dtype=dtype, requires_grad=True)
    y = FastDropout(0.25).train()(x)
    y.sum().backward()
    assert y.dtype == dtype
    torch.testing.assert_close(x.grad, y.detach())  # d(x * mask * scale)/dx at x = 1


def test_gradient_checkpointing_replays_the_same_mask() -> None:
    """The recomputed forward draws the mask the first forward drew (torch restores its RNG
    state before replaying), so checkpointed gradients equal plain ones."""
    dropout, weight = FastDropout(0.5).train(), torch.randn(16, 16)
    x = torch.randn(4, 16, requires_grad=True)

    def block(t: torch.Tensor) -> torch.Tensor:
        return torch.tanh(dropout(t) @ weight)

    grads = []
    for wrap in (block, lambda t: checkpoint(block, t, use_reentrant=False)):
        torch.manual_seed(3)
        x.grad = None
        wrap(x).pow(2).sum().backward()
        grads.append(x.grad.clone())
    torch.testing.assert_close(grads[1], grads[0], rtol=0, atol=0)
    assert bool((grads[0] == 0).any())  # dropout did drop, so a wrong mask would show


def test_swaps_every_lora_dropout_and_leaves_identity(tiny_model_dir: Path) -> None:
    """Each adapted projection's nn.Dropout becomes a FastDropout of its p; dropout 0, which
    peft makes an nn.Identity, stays as it is."""
    for p in (0.1, 0.0):
        model = get_peft_model(
            AutoModelForCausalLM.from_pretrained(tiny_model_dir),
            LoraConfig(r=4, lora_dropout=p, target_modules="all-linear"))
        adapted = [m for name, m in model.named_modules() if name.endswith("lora_dropout.default")]
        assert adapted
        assert use_fast_dropout(model) == (len(adapted) if p else 0)
        now = [m for name, m in model.named_modules() if name.endswith("lora_dropout.default")]
        assert {type(m) for m in now} == ({FastDropout} if p else {nn.Identity})
        assert all(m.p == p for m in now if isinstance(m, FastDropout))
