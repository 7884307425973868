"""DPO's reference log-probabilities, computed once per pair before the first step.

The reference is the base model (the adapter switched off), which training never changes, so
scoring it again at every step would repeat the same forward pass each epoch. Each pair's two
sums are computed once instead, under no_grad, and the steps look them up: a DPO step is then
the policy's forward and backward over both answers, as an SFT step over the same tokens, plus
one forward per pair before training (TRL's `precompute_ref_log_probs` does the same).
Every rank scores its share of the pairs and the table is summed over the ranks, so each holds
all of them (the epochs reshuffle which rank sees a pair). A resumed run scores them again.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from finetune.data import Example
from finetune.preference_data import PAIR_INDEX
from finetune.preference_loss import base_logps


def reference_table(model: nn.Module, pairs: list[Example],
                    collate: Callable[[list[Example]], dict[str, torch.Tensor]],
                    batch_size: int, device: torch.device, rank: int = 0, ranks: int = 1
                    ) -> torch.Tensor:
    """(pairs, 2): the base model's summed log-probability of each pair's chosen and rejected
    answer, row = the pair's PAIR_INDEX; this rank's share (every `ranks`-th pair from
    `rank`) filled in, the other rows 0, so a sum over the ranks completes it."""
    table = torch.zeros(len(pairs), 2, device=device)
    mine = pairs[rank::ranks]
    training = model.training
    model.eval()  # the base model as it answers, without dropout
    for start in range(0, len(mine), batch_size):
        batch = {k: v.to(device) for k, v in collate(mine[start:start + batch_size]).items()}
        sums, _ = base_logps(model, batch)
        table[batch[PAIR_INDEX]] = torch.stack(sums.chunk(2), dim=1)
    model.train(training)
    return table
