"""DPO and ORPO losses on a LoRA model, with the base model as DPO's reference.

A batch holds B pairs as 2B sequences, the chosen answers then the rejected ones
(`finetune.preference_data.pair_collator`), so one forward pass scores both. DPO's reference
is the same model with the adapter switched off (peft's `disable_adapter`) under no_grad:
no second copy of the weights. Training never changes it, so `finetune.reference` scores
every pair with it once before the first step and a step looks the pair's scores up: one
forward and backward a step, the policy's, as in SFT (a batch without pair numbers is scored
afresh, two forward passes). ORPO has no reference. Formulas as TRL 1.13's DPOTrainer
(`sigmoid`, `ipo`) and ORPOTrainer; tests/finetune/test_preference_loss.py checks them
against TRL on the same logits. TRL's trainers are not used: they bring their own loop, and
ours owns checkpoints, resume, cancel, progress lines and the packed batches.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from accelerate.utils import extract_model_from_parallel
from torch import nn

from events.recipe_train import TrainMethod, TrainSection
from finetune.data import IGNORE_INDEX
from finetune.loss import StepLoss, kept_logits
from finetune.preference_data import PAIR_INDEX


def sequence_logps(model: nn.Module, batch: dict[str, torch.Tensor]
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of the log-probabilities of each sequence's labelled tokens, their count), one
    entry per sequence in batch order; the vocabulary projection only where a label is."""
    batch = {k: v for k, v in batch.items() if k != PAIR_INDEX}
    logits, targets, keep = kept_logits(model, batch)
    logits = logits.float()
    labelled = targets != IGNORE_INDEX
    picked = logits.gather(2, targets.clamp(min=0).unsqueeze(2)).squeeze(2)
    logps = (picked - logits.logsumexp(2))[labelled]
    sequence = _sequence_index(batch)[:, keep + 1][labelled]
    count = _sequence_count(batch)
    sums = torch.zeros(count, device=logps.device).index_add(0, sequence, logps)
    tokens = torch.zeros(count, device=logps.device).index_add(0, sequence, torch.ones_like(logps))
    return sums, tokens


def _sequence_index(batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The sequence each position belongs to, numbered across rows: a packed row restarts
    its position ids at 0 for each sequence; a padded batch has one sequence per row."""
    if "position_ids" in batch:
        starts = batch["position_ids"] == 0
        per_row = starts.sum(1)
        return starts.cumsum(1) - 1 + (per_row.cumsum(0) - per_row).unsqueeze(1)
    rows, length = batch["input_ids"].shape
    return torch.arange(rows, device=batch["input_ids"].device).unsqueeze(1).expand(rows, length)


def _sequence_count(batch: dict[str, torch.Tensor]) -> int:
    if "position_ids" in batch:
        return int((batch["position_ids"] == 0).sum())
    return batch["input_ids"].shape[0]


def dpo_loss(policy: torch.Tensor, reference: torch.Tensor, tokens: torch.Tensor, beta: float,
             kind: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(mean loss, chosen rewards, rejected rewards) from summed log-probabilities, chosen
    half first. The margin is the chosen log-ratio to the reference minus the rejected one;
    sigmoid: -logsigmoid(beta x margin); ipo: (margin of per-token means - 1/(2 beta))^2."""
    chosen, rejected = (policy - reference).chunk(2)
    if kind == "sigmoid":
        losses = -F.logsigmoid(beta * (chosen - rejected))
    else:
        chosen_tokens, rejected_tokens = tokens.clamp(min=1).chunk(2)
        losses = (chosen / chosen_tokens - rejected / rejected_tokens - 1 / (2 * beta)) ** 2
    return losses.mean(), beta * chosen.detach(), beta * rejected.detach()


def orpo_loss(policy: torch.Tensor, tokens: torch.Tensor, weight: float
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(mean loss, chosen rewards, rejected rewards): the chosen answers' cross-entropy minus
    `weight` x logsigmoid(log odds ratio) of the per-token mean log-probabilities."""
    mean = policy / tokens.clamp(min=1)
    chosen, rejected = mean.chunk(2)
    log_odds = (chosen - rejected) - (_log1mexp(chosen) - _log1mexp(rejected))
    half = len(policy) // 2
    nll = -policy[:half].sum() / tokens[:half].sum()
    loss = nll - weight * F.logsigmoid(log_odds).mean()
    return loss, weight * chosen.detach(), weight * rejected.detach()


def _log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 - exp(x)) for x < 0, accurate on both sides of -log 2."""
    return torch.where(x > -math.log(2), torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


def base_logps(model: nn.Module, batch: dict[str, torch.Tensor]
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """`sequence_logps` of the base model: the adapter switched off, under no_grad."""
    peft_model = extract_model_from_parallel(model)  # DDP only wraps the policy pass
    with torch.no_grad(), peft_model.disable_adapter():
        return sequence_logps(peft_model, batch)


class PreferenceObjective:
    """The step loss of train.method dpo or orpo, with reward margin and accuracy.

    `reference`: DPO's (pairs, 2) table of the base model's chosen and rejected sums
    (`finetune.reference`), row = a batch's PAIR_INDEX; without it each step scores afresh.
    """

    def __init__(self, train: TrainSection, reference: torch.Tensor | None = None) -> None:
        self.train = train
        self.reference = reference

    def _reference(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        if self.reference is None or PAIR_INDEX not in batch:
            return base_logps(model, batch)[0]
        looked_up = self.reference[batch[PAIR_INDEX].to(self.reference.device)]
        return looked_up.T.flatten().to(batch["input_ids"].device)  # chosen half, rejected half

    def __call__(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> StepLoss:
        if self.train.method is TrainMethod.orpo:
            policy, tokens = sequence_logps(model, batch)
            loss, chosen, rejected = orpo_loss(policy, tokens, self.train.orpo_lambda)
        else:
            reference = self._reference(model, batch)
            policy, tokens = sequence_logps(model, batch)
            loss, chosen, rejected = dpo_loss(policy, reference, tokens, self.train.beta,
                                              self.train.dpo_loss)
        return StepLoss(loss, torch.tensor(len(chosen), device=loss.device), {
            "reward_margin": (chosen - rejected).mean(),
            "reward_accuracy": (chosen > rejected).float().mean()})
