"""The training loss with the vocabulary projection only where a loss is taken.

The shipped recipes train on prompts with one- or two-token answers, so a full forward
spends most of its largest matmul (hidden x 49,152 vocabulary, at every position) on logits
no loss reads. The model is asked instead for the logits of the positions whose next token
carries a label (transformers' `logits_to_keep`, which indexes the hidden states before
`lm_head`), so the weights, tied embeddings included, are the model's own and the forward
still runs through every wrapper (peft, DDP), on every rank. A packed batch is one row, so
exactly the loss positions are projected; a padded batch projects the union of its rows'.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from finetune.data import IGNORE_INDEX


def loss_positions(labels: torch.Tensor) -> torch.Tensor:
    """Positions (along the sequence) whose next token carries a label in any row."""
    return (labels[:, 1:] != IGNORE_INDEX).any(dim=0).nonzero().squeeze(1)


def causal_lm_loss(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean cross-entropy over the labelled tokens, as the model's own `loss` computes it."""
    labels = batch["labels"]
    keep = loss_positions(labels)
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    logits = model(**inputs, logits_to_keep=keep).logits
    targets = labels[:, keep + 1]
    return F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(),
                           ignore_index=IGNORE_INDEX)
