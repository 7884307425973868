"""Causal attention over each example of a packed row, not over the whole row under a mask.

A packed row holds several examples, their position ids restarting at 0 for each. With
`sdpa`, transformers gives such a row a block-diagonal mask, and torch then computes every
query against every key of the row, masked blocks included, on a kernel that cannot skip
them (varlen flash attention is CUDA-only, and GQA's keys are copied per head besides). On
the variable-length set a row of about 1,200 tokens holds examples of 134 tokens of
context on average, so most of that work is thrown away. `packed_sdpa` runs SDPA with
`is_causal` on each example's slice instead: the same outputs (the masked blocks contribute
nothing), a fraction of the work. Rows that are not packed (padded batches, the accuracy
check, generation) go to transformers' own `sdpa` with its mask, unchanged.

On a CPU with AMX, a short example's attention runs in fp32 even under bf16 autocast: the
CPU flash kernel's bf16 path sets up AMX tiles for every block, which on examples of a few
dozen tokens costs more than the arithmetic (forward and backward of one 46-token example:
1.75 ms in bf16, 0.42 ms in fp32; from about 300 tokens on bf16 is as fast or faster).
Without AMX (AVX-512 BF16 alone) bf16 was the faster of the two on the shipped recipe.
"""

from __future__ import annotations

from functools import cache
from itertools import pairwise

import torch
from transformers import AttentionInterface, AttentionMaskInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import sdpa_mask

PACKED_SDPA = "aif_packed_sdpa"
"""The `attn_implementation` name the trainer loads its base model with."""


def example_bounds(position_ids: torch.Tensor) -> list[list[int]] | None:
    """Each row's example boundaries (starts, then the row's end), or None where no row is
    packed. An example starts where its position id is 0; padding after a row's last
    example goes on with its positions (`preference_data._rows`), so it stays in that
    example, where causal attention keeps it out of every real token's context. A row's
    first token starts an example whatever its position id."""
    if position_ids.shape[1] < 2 or not bool((position_ids[:, 1:] == 0).any()):
        return None
    width = position_ids.shape[1]
    return [[0, *((row[1:] == 0).nonzero().flatten() + 1).tolist(), width] for row in position_ids]


_last: tuple[torch.Tensor, list[list[int]] | None] | None = None


def _bounds_of(position_ids: torch.Tensor) -> list[list[int]] | None:
    """`example_bounds`, once per forward pass: every layer gets the same position-id
    tensor, and reading its boundaries waits for the device (a sync per layer on a GPU)."""
    global _last
    if _last is None or _last[0] is not position_ids:
        _last = (position_ids, example_bounds(position_ids))
    return _last[1]


FP32_BELOW = 256
"""Examples shorter than this many tokens get fp32 attention on an AMX CPU."""


@cache
def _amx() -> bool:
    return bool(getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)())


def _short_in_fp32(query: torch.Tensor) -> bool:
    """Whether short examples' attention should leave bf16 for fp32 (see above): bf16
    inputs or bf16 autocast, on an AMX CPU."""
    if query.device.type != "cpu" or not _amx():
        return False
    return query.dtype == torch.bfloat16 or (
        torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16)


def _causal(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor,
            value: torch.Tensor, kwargs: dict[str, object]) -> torch.Tensor:
    return sdpa_attention_forward(module, query, key, value, None, is_causal=True, **kwargs)[0]


def _row(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
         starts: list[int], fp32: bool, kwargs: dict[str, object]) -> torch.Tensor:
    """One packed row, each example on its own; with `fp32`, the row's queries, keys and
    values are cast once and the examples shorter than FP32_BELOW read the fp32 copies."""
    spans = list(pairwise(starts))
    fp32 = fp32 and any(e - s < FP32_BELOW for s, e in spans)
    wide = tuple(t.float() for t in (query, key, value)) if fp32 else ()
    parts = []
    for s, e in spans:
        if fp32 and e - s < FP32_BELOW:
            with torch.autocast("cpu", enabled=False):
                parts.append(_causal(module, *(t[:, :, s:e] for t in wide), kwargs))
        else:
            parts.append(_causal(module, *(t[:, :, s:e] for t in (query, key, value)), kwargs))
    row = torch.cat(parts, dim=1)  # fp32 beside bf16 parts promotes to fp32
    return row.to(torch.bfloat16) if fp32 else row


def packed_sdpa(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor,
                value: torch.Tensor, attention_mask: torch.Tensor | None,
                **kwargs: object) -> tuple[torch.Tensor, None]:
    """transformers' attention-function signature: query (batch, heads, tokens, head dim),
    key and value likewise with their own heads; returns (batch, tokens, heads, head dim)."""
    position_ids = kwargs.get("position_ids")
    bounds = None
    if isinstance(position_ids, torch.Tensor) and query.shape[2] == key.shape[2]:
        bounds = _bounds_of(position_ids)  # no cache: queries and keys are the row
    if bounds is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    kwargs.pop("is_causal", None)
    fp32 = _short_in_fp32(query)
    return torch.cat([
        _row(module, query[b:b + 1], key[b:b + 1], value[b:b + 1], starts, fp32, kwargs)
        for b, starts in enumerate(bounds)
    ]), None


def register() -> str:
    """Make PACKED_SDPA known to transformers (attention and mask), in this process; the
    mask is `sdpa`'s, which the rows that are not packed use."""
    AttentionInterface.register(PACKED_SDPA, packed_sdpa)
    AttentionMaskInterface.register(PACKED_SDPA, sdpa_mask)
    return PACKED_SDPA
