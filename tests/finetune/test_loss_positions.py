"""Logits only where loss is: the loss and every gradient equal the full computation's
(float32; relative 1e-5, absolute 1e-7), packed and padded, tied embeddings and LoRA."""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerBase

from finetune.data import IGNORE_INDEX, collator
from finetune.loss import causal_lm_loss, loss_positions

TOL = {"rtol": 1e-5, "atol": 1e-7}


def _example(ids: list[int], answer: int) -> dict[str, list[int]]:
    """A prompt of `ids` whose last `answer` tokens carry the loss."""
    labels = [IGNORE_INDEX] * (len(ids) - answer) + ids[-answer:]
    return {"input_ids": ids, "attention_mask": [1] * len(ids), "labels": labels}


EXAMPLES = [_example([11, 12, 13, 14, 15, 16, 17], 1), _example([21, 22, 23], 2),
            _example([31, 32, 33, 34, 35, 36, 37, 38, 39, 40, 41], 2)]


def _tiny(tied: bool) -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=300, hidden_size=32, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         tie_word_embeddings=tied, use_cache=False)
    return LlamaForCausalLM(config)


def _grads(model: torch.nn.Module, loss: torch.Tensor) -> dict[str, torch.Tensor]:
    model.zero_grad()
    loss.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


def _compare(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> None:
    full = model(**batch).loss
    full_grads = _grads(model, full)
    sparse = causal_lm_loss(model, batch)
    sparse_grads = _grads(model, sparse)
    torch.testing.assert_close(sparse, full, **TOL)
    assert sparse_grads.keys() == full_grads.keys() and full_grads
    for name, grad in full_grads.items():
        torch.testing.assert_close(sparse_grads[name], grad, **TOL, msg=name)


@pytest.mark.parametrize("packing", [True, False], ids=["packed", "padded"])
def test_full_model_with_tied_embeddings(tokenizer: PreTrainedTokenizerBase,
                                         packing: bool) -> None:
    model = _tiny(tied=True)
    batch = collator(tokenizer, packing)(EXAMPLES)
    _compare(model, batch)
    assert model.lm_head.weight is model.model.embed_tokens.weight  # still one tensor


@pytest.mark.parametrize("packing", [True, False], ids=["packed", "padded"])
def test_lora_gradients(tokenizer: PreTrainedTokenizerBase, packing: bool) -> None:
    model = get_peft_model(_tiny(tied=False), LoraConfig(
        r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False))
    _compare(model, collator(tokenizer, packing)(EXAMPLES))


def test_only_loss_positions_are_projected(tokenizer: PreTrainedTokenizerBase) -> None:
    packed = collator(tokenizer, packing=True)(EXAMPLES)
    # 21 tokens in one row, 5 of them carry loss; each is predicted one position before.
    assert loss_positions(packed["labels"]).tolist() == [5, 7, 8, 18, 19]
    seen = []
    model = _tiny(tied=True)
    model.lm_head.register_forward_hook(lambda _m, args, _o: seen.append(args[0].shape))
    causal_lm_loss(model, packed)
    assert seen == [torch.Size([1, 5, 32])]
