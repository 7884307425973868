"""Padding-free batches must train exactly what padded batches train, minus the padding."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, PreTrainedTokenizerBase

from finetune import attention as packed
from finetune.attention import example_bounds, register
from finetune.data import IGNORE_INDEX, REAL_TOKENS, collator, real_tokens
from finetune.preference_data import pair_collator

SHORT = {"input_ids": [5, 6], "attention_mask": [1, 1], "labels": [IGNORE_INDEX, 6]}
LONG = {"input_ids": [5, 6, 7, 8], "attention_mask": [1, 1, 1, 1],
        "labels": [IGNORE_INDEX, IGNORE_INDEX, 7, 8]}


def test_packed_batch_is_one_row_without_padding(tokenizer: PreTrainedTokenizerBase) -> None:
    batch = collator(tokenizer, packing=True)([SHORT, LONG])
    assert batch["input_ids"].tolist() == [[5, 6, 5, 6, 7, 8]]
    assert batch["position_ids"].tolist() == [[0, 1, 0, 1, 2, 3]]
    # The first token of each example is never a target: no example learns from another.
    assert batch["labels"].tolist() == [[IGNORE_INDEX, 6, IGNORE_INDEX, IGNORE_INDEX, 7, 8]]
    assert "attention_mask" not in batch
    assert int(real_tokens(batch)) == 6


def test_real_tokens_leave_out_padding(tokenizer: PreTrainedTokenizerBase) -> None:
    padded = collator(tokenizer, packing=False)([SHORT, LONG])
    assert padded["input_ids"].numel() == 8 and int(real_tokens(padded)) == 6


@pytest.fixture
def model(tiny_model_dir: Path) -> torch.nn.Module:
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    model.config.use_cache = False
    return model.eval()


@dataclass(frozen=True)
class Batches:
    examples: list[dict[str, list[int]]]
    padded: dict[str, torch.Tensor]
    packed: dict[str, torch.Tensor]


@pytest.fixture
def batches(tokenizer: PreTrainedTokenizerBase) -> Batches:
    """Three tickets of different lengths, collated both ways."""
    texts = ["No power on Elm Street since noon.", "Bill too high.",
             "Sparks from the line at the school, please hurry!"]
    examples = []
    for text in texts:
        ids = tokenizer(text)["input_ids"]
        examples.append({"input_ids": ids, "attention_mask": [1] * len(ids),
                         "labels": [IGNORE_INDEX] * 3 + ids[3:]})
    return Batches(examples, collator(tokenizer, packing=False)(examples),
                   collator(tokenizer, packing=True)(examples))


def test_packed_loss_and_logits_equal_padded(model: torch.nn.Module, batches: Batches) -> None:
    with torch.no_grad():
        padded_out, packed_out = model(**batches.padded), model(**batches.packed)
    assert packed_out.loss.item() == pytest.approx(padded_out.loss.item(), rel=1e-5)
    # Each example's logits inside the packed row are its own: no attention across examples.
    start = 0
    for row, example in enumerate(batches.examples):
        n = len(example["input_ids"])
        torch.testing.assert_close(
            packed_out.logits[0, start:start + n], padded_out.logits[row, :n],
            rtol=1e-4, atol=1e-4,
        )
        start += n


def test_a_kv_cache_would_break_packing(model: torch.nn.Module, batches: Batches) -> None:
    """Why training sets use_cache=False: with a cache transformers ignores the boundaries."""
    n = len(batches.examples[-1]["input_ids"])
    with torch.no_grad():
        leaky = model(**batches.packed, use_cache=True).logits[0, -n:]
        own = model(**batches.padded).logits[-1, :n]
    assert (leaky - own).abs().max().item() > 1e-3


def test_example_bounds_split_rows_where_positions_restart() -> None:
    assert example_bounds(torch.tensor([[0, 1, 2, 3]])) is None  # one example: plain sdpa
    assert example_bounds(torch.tensor([[0, 1, 0, 1, 2, 0]])) == [[0, 2, 5, 6]]
    # Pair rows: padding goes on with its row's last positions and stays in that example.
    assert example_bounds(torch.tensor([[0, 1, 0, 1, 2, 3], [0, 0, 1, 2, 3, 4]])) == [
        [0, 2, 6], [0, 1, 6]]
    assert example_bounds(torch.tensor([[3, 4, 0, 1]])) == [[0, 2, 4]]  # a row's first token


def _loss_and_grads(model: torch.nn.Module, batch: dict[str, torch.Tensor]
                    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
    model.zero_grad()
    loss = model(**batch).loss
    loss.backward()
    return loss.detach(), [p.grad.clone() for p in model.parameters()]


@pytest.mark.parametrize("pairs", [False, True], ids=["one-row", "pair-rows"])
def test_per_example_attention_trains_what_the_block_mask_trains(
        tiny_model_dir: Path, batches: Batches, tokenizer: PreTrainedTokenizerBase,
        pairs: bool) -> None:
    """The trainer's attention (per example, is_causal) against transformers' sdpa over the
    block-diagonal mask: the same loss and gradients, on one packed row and on the two
    end-padded rows of a preference batch (key/value heads shared, as SmolLM2 shares them)."""
    batch = batches.packed
    if pairs:
        chosen, rejected = batches.examples[:2], batches.examples[1:]
        batch = pair_collator(tokenizer, packing=True)([
            {"chosen_input_ids": c["input_ids"], "chosen_labels": c["labels"],
             "rejected_input_ids": r["input_ids"], "rejected_labels": r["labels"]}
            for c, r in zip(chosen, rejected, strict=True)])
        batch = {k: v for k, v in batch.items() if k != REAL_TOKENS}
        assert batch["input_ids"].shape[0] == 2
    got = {}
    for attention in ("sdpa", register()):
        model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32,
                                                     attn_implementation=attention)
        model.config.use_cache = False
        assert model.config.num_key_value_heads < model.config.num_attention_heads
        got[attention] = _loss_and_grads(model.train(), batch)
    (mask_loss, mask_grads), (own_loss, own_grads) = got.values()
    torch.testing.assert_close(own_loss, mask_loss, rtol=1e-5, atol=1e-6)
    for own, masked in zip(own_grads, mask_grads, strict=True):
        torch.testing.assert_close(own, masked, rtol=1e-4, atol=1e-6)


def test_per_example_attention_leaves_padded_batches_to_sdpa(
        tiny_model_dir: Path, batches: Batches) -> None:
    """A padded batch (the accuracy check's, `packing: false`) keeps sdpa's padding mask."""
    outputs = []
    for attention in ("sdpa", register()):
        model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32,
                                                     attn_implementation=attention)
        with torch.no_grad():
            outputs.append(model.eval()(**batches.padded).logits)
    torch.testing.assert_close(outputs[1], outputs[0], rtol=0, atol=0)


def test_short_examples_attend_in_fp32_under_bf16_on_amx(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """On an AMX CPU (forced here, so the test runs anywhere) an example shorter than
    FP32_BELOW runs its attention in fp32 under bf16 autocast, a longer one stays bf16; the
    row comes back in bf16, the short example exactly its fp32 causal attention, rounded."""
    monkeypatch.setattr(packed, "_amx", lambda: True)
    seen: list[torch.dtype] = []
    sdpa = packed.sdpa_attention_forward

    def spy(module: torch.nn.Module, query: torch.Tensor, *args: object, **kwargs: object
            ) -> tuple[torch.Tensor, None]:
        seen.append(query.dtype)
        return sdpa(module, query, *args, **kwargs)

    monkeypatch.setattr(packed, "sdpa_attention_forward", spy)
    short, long = 5, packed.FP32_BELOW
    positions = torch.cat([torch.arange(short), torch.arange(long)])[None]
    torch.manual_seed(0)
    query, key, value = (torch.randn(1, heads, short + long, 8, dtype=torch.bfloat16)
                         for heads in (4, 2, 2))  # as bf16 frozen weights give them
    module = torch.nn.Module()
    module.num_key_value_groups, module.training = 2, True
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, _ = packed.packed_sdpa(module, query, key, value, None,
                                    position_ids=positions, scaling=8 ** -0.5)
    assert seen == [torch.float32, torch.bfloat16]
    assert out.dtype == torch.bfloat16 and out.shape == (1, short + long, 4, 8)
    want = torch.nn.functional.scaled_dot_product_attention(
        query[:, :, :short].float(), key[:, :, :short].float().repeat_interleave(2, 1),
        value[:, :, :short].float().repeat_interleave(2, 1), is_causal=True)
    torch.testing.assert_close(out[0, :short], want[0].transpose(0, 1).bfloat16(),
                               rtol=0, atol=0)
