"""DPO and ORPO losses: against TRL's on the same logits, on packed and padded batches, and
with the base model (the adapter switched off) as the reference, scored afresh or looked up
from the table computed once before training."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from peft import LoraConfig, get_peft_model
from torch import nn
from transformers import AutoModelForCausalLM, PreTrainedTokenizerBase
from trl.experimental.orpo.orpo_trainer import ORPOTrainer
from trl.trainer.dpo_trainer import DPOTrainer

from events.recipe_train import TrainSection
from finetune.data import IGNORE_INDEX, real_tokens
from finetune.preference_data import PAIR_INDEX, PairEncoder, indexed, pair_collator
from finetune.preference_loss import (
    PreferenceObjective,
    base_logps,
    dpo_loss,
    orpo_loss,
    sequence_logps,
)
from finetune.reference import reference_table

VOCAB = 11


class _FixedLogits(nn.Module):
    """A 'model' answering with given logits, at the positions asked for."""

    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.logits = logits

    def forward(self, logits_to_keep: torch.Tensor, **_: Any) -> SimpleNamespace:
        return SimpleNamespace(logits=self.logits[:, logits_to_keep])


def _padded_pairs(pairs: int = 3, length: int = 9) -> dict[str, torch.Tensor]:
    """2 x `pairs` sequences (chosen first), a prompt of 3 tokens and answers of 2 to 6."""
    generator = torch.Generator().manual_seed(0)
    input_ids = torch.randint(0, VOCAB, (2 * pairs, length), generator=generator)
    labels = torch.full_like(input_ids, IGNORE_INDEX)
    for row in range(2 * pairs):
        end = 3 + 2 + (row * 5) % 5  # answers of different lengths, padding after them
        labels[row, 3:end] = input_ids[row, 3:end]
    return {"input_ids": input_ids, "labels": labels,
            "attention_mask": torch.ones_like(input_ids)}


def _trl_log_probs(logits: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """What TRL's fused LM head returns: each next token's log-probability, 0 off labels."""
    mask = batch["labels"][:, 1:] != IGNORE_INDEX
    logps = logits[:, :-1].log_softmax(-1).gather(2, batch["input_ids"][:, 1:, None]).squeeze(2)
    return logps * mask


def _trl_model(logits: torch.Tensor, batch: dict[str, torch.Tensor]) -> Any:
    log_probs = _trl_log_probs(logits, batch)
    zeros = torch.zeros_like(log_probs)
    return lambda **_: SimpleNamespace(log_probs=log_probs, entropy=zeros, mean_logits=zeros,
                                       is_top1=zeros.bool())


def _trl_dpo(policy: torch.Tensor, reference: torch.Tensor, batch: dict[str, torch.Tensor],
             beta: float, loss_type: str) -> tuple[float, dict[str, list[float]]]:
    """TRL's DPOTrainer._compute_loss on these logits (reference log-probabilities given, as
    with its precompute_ref_log_probs), on a stand-in for the trainer's state."""
    ref = _trl_log_probs(reference, batch).sum(1)
    accelerator = SimpleNamespace(device="cpu", gather=lambda t: t,
                                  gather_for_metrics=lambda t: t)
    trainer = SimpleNamespace(
        model=SimpleNamespace(training=True), accelerator=accelerator, aux_loss_enabled=False,
        ld_alpha=None, precompute_ref_logps=True, f_divergence_type="reverse_kl", beta=beta,
        loss_types=[loss_type], loss_weights=[1.0], use_weighting=False, label_smoothing=0.0,
        _metrics={"train": defaultdict(list)}, _total_train_tokens=0, _tp_size=1)
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"],
              "completion_mask": (batch["labels"] != IGNORE_INDEX).long(),
              "ref_chosen_logps": ref.chunk(2)[0], "ref_rejected_logps": ref.chunk(2)[1]}
    loss = DPOTrainer._compute_loss(trainer, _trl_model(policy, batch), inputs, False)
    return float(loss), trainer._metrics["train"]


@pytest.mark.parametrize("loss_type", ["sigmoid", "ipo"])
def test_dpo_loss_and_rewards_equal_trl_on_the_same_logits(loss_type: str) -> None:
    batch = _padded_pairs()
    generator = torch.Generator().manual_seed(1)
    policy, reference = torch.randn(2, *batch["input_ids"].shape, VOCAB, generator=generator)
    ours, tokens = sequence_logps(_FixedLogits(policy), batch)
    ref, _ = sequence_logps(_FixedLogits(reference), batch)
    loss, chosen, rejected = dpo_loss(ours, ref, tokens, 0.3, loss_type)
    trl_loss, metrics = _trl_dpo(policy, reference, batch, 0.3, loss_type)
    assert float(loss) == pytest.approx(trl_loss, rel=1e-5)
    assert float((chosen - rejected).mean()) == pytest.approx(metrics["rewards/margins"][0],
                                                              rel=1e-5)
    assert float((chosen > rejected).float().mean()) == metrics["rewards/accuracies"][0]


def test_orpo_loss_equals_trl_on_the_same_logits() -> None:
    batch = _padded_pairs()
    generator = torch.Generator().manual_seed(2)
    logits = torch.randn(*batch["input_ids"].shape, VOCAB, generator=generator)
    sums, tokens = sequence_logps(_FixedLogits(logits), batch)
    loss, chosen, _ = orpo_loss(sums, tokens, 0.2)

    labels = batch["labels"]
    mean = ORPOTrainer.get_batch_logps(logits, labels, average_log_prob=True)
    trainer = SimpleNamespace(beta=0.2, accelerator=SimpleNamespace(device="cpu"))
    ratio_terms, trl_chosen, *_ = ORPOTrainer.odds_ratio_loss(trainer, *mean.chunk(2))
    half = len(labels) // 2
    nll = nn.functional.cross_entropy(logits[:half, :-1].flatten(0, 1), labels[:half, 1:].flatten(),
                                      ignore_index=IGNORE_INDEX)
    assert float(loss) == pytest.approx(float(nll - ratio_terms.mean()), rel=1e-5)
    assert torch.allclose(chosen, trl_chosen, rtol=1e-5)


def _tiny_model(tiny_model_dir: Path) -> nn.Module:
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    model.config.use_cache = False  # as training has it: packed sequences stay apart
    return model


def _tiny_pairs(tokenizer: PreTrainedTokenizerBase) -> list[dict[str, list[int]]]:
    encode = PairEncoder(tokenizer, 64)
    rows = [{"prompt": f"Request {i}: my meter", "chosen": "Metering team, ticket opened.",
             "rejected": "No idea" + "!" * i} for i in range(3)]
    return [encode(row)[0] for row in rows]


def test_packed_and_padded_pairs_score_alike(
        tiny_model_dir: Path, tokenizer: PreTrainedTokenizerBase) -> None:
    model = _tiny_model(tiny_model_dir).eval()
    pairs = _tiny_pairs(tokenizer)
    with torch.no_grad():
        packed = sequence_logps(model, pair_collator(tokenizer, packing=True)(pairs))
        padded = sequence_logps(model, pair_collator(tokenizer, packing=False)(pairs))
    for a, b in zip(packed, padded, strict=True):
        assert a.shape == (6,) and torch.allclose(a, b, atol=1e-4)


def test_a_packed_pair_batch_is_a_chosen_row_and_a_rejected_row_counting_no_padding(
        tokenizer: PreTrainedTokenizerBase) -> None:
    pairs = _tiny_pairs(tokenizer)
    batch = pair_collator(tokenizer, packing=True)(pairs)
    lengths = {side: sum(len(p[f"{side}_input_ids"]) for p in pairs)
               for side in ("chosen", "rejected")}
    assert lengths["chosen"] != lengths["rejected"]  # so one row is padded
    assert batch["input_ids"].shape == (2, max(lengths.values()))
    assert int(real_tokens(batch)) == sum(lengths.values())
    for row, side in enumerate(("chosen", "rejected")):
        assert (batch["labels"][row, lengths[side]:] == IGNORE_INDEX).all()
        assert int((batch["position_ids"][row] == 0).sum()) == len(pairs)


def test_the_reference_is_the_base_model_with_the_adapter_off(
        tiny_model_dir: Path, tokenizer: PreTrainedTokenizerBase) -> None:
    base = _tiny_model(tiny_model_dir)
    batch = pair_collator(tokenizer, packing=True)(_tiny_pairs(tokenizer))
    with torch.no_grad():
        base_logps, _ = sequence_logps(base, batch)
    model = get_peft_model(_tiny_model(tiny_model_dir),
                           LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"))
    objective = PreferenceObjective(TrainSection(method="dpo"))
    at_start = objective(model, batch)  # a fresh LoRA is the base: no preference yet
    assert at_start.loss.item() == pytest.approx(torch.log(torch.tensor(2.0)).item(), abs=1e-5)
    assert float(at_start.metrics["reward_margin"]) == pytest.approx(0.0, abs=1e-5)
    assert int(at_start.weight) == 3
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(std=0.5)
    calls = []
    model.base_model.model.register_forward_hook(lambda *_: calls.append(1))
    moved = objective(model, batch)
    assert len(calls) == 2  # policy and reference, chosen and rejected together
    reference = moved.metrics["reward_margin"]  # beta x (policy - base) margins
    policy, _ = sequence_logps(model, batch)
    margin = 0.1 * ((policy - base_logps).chunk(2)[0] - (policy - base_logps).chunk(2)[1]).mean()
    assert float(reference) == pytest.approx(float(margin), rel=1e-4, abs=1e-6)
    moved.loss.backward()
    trained = [n for n, p in model.named_parameters() if p.grad is not None]
    assert trained and all("lora_" in n for n in trained)


def test_cached_reference_log_probs_equal_fresh_ones_after_the_adapter_moved(
        tiny_model_dir: Path, tokenizer: PreTrainedTokenizerBase) -> None:
    pairs = indexed(_tiny_pairs(tokenizer))
    collate = pair_collator(tokenizer, packing=True)
    model = get_peft_model(_tiny_model(tiny_model_dir),
                           LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"))
    shares = [reference_table(model, pairs, collate, 2, torch.device("cpu"), rank, 2)
              for rank in range(2)]  # two ranks' shares, summed as training reduces them
    assert [int((share != 0).all(1).sum()) for share in shares] == [2, 1]
    table = shares[0] + shares[1]
    assert model.training  # scored in eval mode, then put back
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(std=0.5)  # the policy is no longer the base
    batch = collate([pairs[2], pairs[0]])  # another order and batch than the table's
    fresh, _ = base_logps(model, batch)
    assert torch.allclose(table[[2, 0]].T.flatten(), fresh, atol=1e-4)
    policy, _ = sequence_logps(model, batch)
    assert not torch.allclose(policy, fresh, atol=1e-2)

    calls = []
    model.base_model.model.register_forward_hook(lambda *_: calls.append(1))
    cached = PreferenceObjective(TrainSection(method="dpo"), table)(model, batch)
    assert len(calls) == 1  # the policy only: no reference pass in the step
    scored = PreferenceObjective(TrainSection(method="dpo"))(model, batch)
    assert len(calls) == 3
    assert float(cached.loss) == pytest.approx(float(scored.loss), abs=1e-5)
    for name, value in scored.metrics.items():
        assert float(cached.metrics[name]) == pytest.approx(float(value), abs=1e-5)


def test_padded_pair_batches_carry_their_pair_numbers(
        tokenizer: PreTrainedTokenizerBase) -> None:
    pairs = indexed(_tiny_pairs(tokenizer), start=5)
    batch = pair_collator(tokenizer, packing=False)([pairs[1], pairs[0]])
    assert batch[PAIR_INDEX].tolist() == [6, 5] and batch["input_ids"].shape[0] == 4
