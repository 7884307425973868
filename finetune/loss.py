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

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from finetune.data import IGNORE_INDEX, REAL_TOKENS


def loss_positions(labels: torch.Tensor) -> torch.Tensor:
    """Positions (along the sequence) whose next token carries a label in any row."""
    return (labels[:, 1:] != IGNORE_INDEX).any(dim=0).nonzero().squeeze(1)


def kept_logits(model: nn.Module, batch: dict[str, torch.Tensor]
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(logits, targets, positions) of the positions whose next token carries a label."""
    labels = batch["labels"]
    keep = loss_positions(labels)
    inputs = {k: v for k, v in batch.items() if k not in ("labels", REAL_TOKENS)}
    return model(**inputs, logits_to_keep=keep).logits, labels[:, keep + 1], keep


def causal_lm_loss(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean cross-entropy over the labelled tokens, as the model's own `loss` computes it."""
    logits, targets, _ = kept_logits(model, batch)
    return F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(),
                           ignore_index=IGNORE_INDEX)


@dataclass(frozen=True)
class StepLoss:
    """A micro-batch's loss, what it is a mean over (validation weighs batches by it), and
    the figures a progress line shows beside it."""

    loss: torch.Tensor
    weight: torch.Tensor
    metrics: dict[str, torch.Tensor] = field(default_factory=dict)


def sft_loss(model: nn.Module, batch: dict[str, torch.Tensor]) -> StepLoss:
    """`causal_lm_loss`, a mean over the trained tokens."""
    return StepLoss(causal_lm_loss(model, batch), (batch["labels"][:, 1:] != IGNORE_INDEX).sum())
