"""LoRA dropout with a cheaper random mask on the CPU.

peft puts an `nn.Dropout` before each adapter's A matrix. On a CPU its mask comes from
torch's Mersenne Twister, one draw per element: about 5 ns an element here, 16 % of a bf16
training step on the shipped recipe (`docs/benchmarks.md`), more than the step's attention
forward. `FastDropout` draws the same Bernoulli mask from numpy's SFC64 generator, 16 bits
an element (four elements per 64-bit draw): about 0.5 ns an element. The drop probability is
rounded to a multiple of 1/65,536 (0.05 becomes 0.050003).

Each call seeds its generator from torch's: the masks follow `set_seed`, a checkpoint's
saved RNG state, and gradient checkpointing's replay of the forward (which restores torch's
RNG state, so the recomputed mask is the one the forward drew). CUDA keeps `nn.Dropout`:
its Philox draws are already cheap there.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

_BITS = 1 << 16


class FastDropout(nn.Module):
    """`nn.Dropout(p)` on a CPU tensor, its mask from numpy's SFC64 seeded by torch."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p
        self._dropped = round(p * _BITS)  # of every 65,536 bit patterns, this many drop
        self._scale = _BITS / (_BITS - self._dropped) if self._dropped < _BITS else 0.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self._dropped == 0:
            return x
        seed = int(torch.randint(0, 2**63 - 1, (), dtype=torch.int64))
        n = x.numel()
        bits = np.random.SFC64(seed).random_raw((n + 3) // 4).view(np.int16)[:n]
        # int16 reads the patterns as -32768..32767; the lowest `_dropped` of them drop
        keep = torch.from_numpy(bits).view(x.shape) >= self._dropped - _BITS // 2
        return x * keep.to(x.dtype).mul_(self._scale)

    def extra_repr(self) -> str:
        return f"p={self.p}"


def use_fast_dropout(model: nn.Module) -> int:
    """Swap every LoRA `nn.Dropout` of `model` for a `FastDropout` of the same p; returns how
    many were swapped (peft's `nn.Identity`, for dropout 0, stays)."""
    swapped = 0
    for module in model.modules():
        dropouts = getattr(module, "lora_dropout", None)
        if not isinstance(dropouts, nn.ModuleDict):
            continue
        for name, dropout in dropouts.items():
            if type(dropout) is nn.Dropout:
                dropouts[name] = FastDropout(dropout.p)
                swapped += 1
    return swapped
