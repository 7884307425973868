"""Preference pairs (train.method dpo and orpo) -> token ids, the loss on the answers only.

A row is a `prompt` (text, or the chat `messages` before the answer) with a `chosen` and a
`rejected` answer; `data.columns` maps other column names as for SFT rows. The rows are read,
listed and refused by `finetune.data` like SFT rows (`data.format: preference` picks this
encoder there), so the pre-flight, `max_bad_fraction` and the validation split treat them alike.

A pair is refused, by line and rule, where DPO cannot learn from it: an empty field, two
answers that are the same text, or a prompt and answer over max_seq_len. SFT cuts a long
row to max_seq_len; a pair is not cut, since the preference is between whole answers and a
cut may remove what makes one worse (or leave the two equal). A field too long for any
max_seq_len window is refused before it is tokenised: a 10 MB cell costs no tokenizer time.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from transformers import PreTrainedTokenizerBase

from finetune.data import (
    IGNORE_INDEX,
    PAIR_SIDES,
    REAL_TOKENS,
    Example,
    _Chat,
    _string,
    collator,
)
from finetune.rows import RowError

ANSWERS = ("chosen", "rejected")
PAIR_INDEX = "pair_index"
"""Each pair's number in its split, where training gives one (`indexed`): a batch carries
them so DPO can look up the reference log-probabilities computed once per pair; not a model
input."""


class PairEncoder:
    """A pair row -> ({chosen_,rejected_}{input_ids,labels}, tokens of both sequences)."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, max_seq_len: int) -> None:
        self.tokenizer = tokenizer
        self.max_seq_len = max_seq_len
        # A token is at most this many characters, so a longer text has more tokens than
        # max_seq_len: refusing it untokenised gives the same verdict as tokenising it.
        self.max_chars = max_seq_len * max(map(len, tokenizer.get_vocab()))
        self.chat = _Chat(tokenizer) if tokenizer.chat_template else None

    def __call__(self, row: dict[str, Any]) -> tuple[Example, int]:
        answers = [_string(row, name) for name in ANSWERS]
        if answers[0].split() == answers[1].split():
            raise RowError("chosen and rejected are the same answer (up to whitespace)")
        texts = dict(zip(ANSWERS, answers, strict=True))
        if "messages" in row:
            texts["messages"] = _contents(row["messages"])
        else:
            texts["prompt"] = _string(row, "prompt")
        for column, text in texts.items():
            if len(text) > self.max_chars:
                raise RowError(f"column {column!r} has {len(text)} characters, more than "
                               f"max_seq_len {self.max_seq_len} tokens can hold")
        prompt, *responses = (self._chat(row["messages"], answers) if "messages" in row
                              else self._text(texts["prompt"], answers))
        longest = len(prompt) + max(map(len, responses))
        if longest > self.max_seq_len:
            raise RowError(f"the prompt and the longer answer are {longest} tokens, over "
                           f"max_seq_len {self.max_seq_len}; pairs are not cut, raise it or "
                           "shorten the row")
        example: Example = {}
        for side, response in zip(PAIR_SIDES, responses, strict=True):
            example[side + "input_ids"] = prompt + response
            example[side + "labels"] = [IGNORE_INDEX] * len(prompt) + response
        return example, 2 * len(prompt) + sum(map(len, responses))

    def _text(self, prompt: str, answers: list[str]) -> list[list[int]]:
        """Prompt and answers as SFT's prompt_completion has them: each answer ends in EOS."""
        return [self.tokenizer(prompt)["input_ids"], *(
            [*self.tokenizer(a, add_special_tokens=False)["input_ids"], self.tokenizer.eos_token_id]
            for a in answers)]

    def _chat(self, messages: Any, answers: list[str]) -> list[list[int]]:
        """The conversation with the generation prompt, then each answer's assistant turn as
        the chat template renders it (end-of-turn token included)."""
        if self.chat is None:
            raise RowError("column 'messages' needs a tokenizer with a chat template")
        if not isinstance(messages, list) or not messages:
            raise RowError("column 'messages' must be a non-empty list")
        full = [self.chat({"messages": [*messages, {"role": "assistant", "content": a}]})[0]
                for a in answers]  # checks each message and that turns render as prefixes
        prompt = self.chat._ids(messages, generation_prompt=True)
        return [prompt, *(ids[len(prompt):] for ids in full)]


def _contents(messages: Any) -> str:
    """The text of a conversation's messages, for the length check (`_chat` checks them)."""
    if not isinstance(messages, list):
        return ""
    return "".join(m["content"] for m in messages
                   if isinstance(m, dict) and isinstance(m.get("content"), str))


def pair_collator(tokenizer: PreTrainedTokenizerBase,
                  packing: bool) -> Callable[[list[Example]], dict[str, torch.Tensor]]:
    """A batch of B pairs as 2B sequences, the chosen answers then the rejected ones in the
    same order, so one forward pass scores both halves. Padded: one row a sequence, as SFT's
    collator pads them. Packed: two rows, the chosen sequences in one and the rejected in the
    other. Without a varlen attention kernel (CPUs) a packed row's attention is quadratic in
    the row's length, so one row of 2B sequences would cost twice per token what SFT's row
    of B does; two rows of B cost the same."""
    collate = collator(tokenizer, packing)

    def collate_pairs(pairs: list[Example]) -> dict[str, torch.Tensor]:
        sequences = [{"input_ids": pair[side + "input_ids"], "labels": pair[side + "labels"],
                      "attention_mask": [1] * len(pair[side + "input_ids"])}
                     for side in PAIR_SIDES for pair in pairs]
        batch = collate(sequences) if not packing else _rows(
            [collate(sequences[:len(pairs)]), collate(sequences[len(pairs):])],
            tokenizer.eos_token_id)
        if PAIR_INDEX in pairs[0]:
            batch[PAIR_INDEX] = torch.tensor([pair[PAIR_INDEX][0] for pair in pairs])
        return batch

    return collate_pairs


def indexed(pairs: list[Example], start: int = 0) -> list[Example]:
    """The pairs, each with its number (from `start`) under PAIR_INDEX."""
    return [{**pair, PAIR_INDEX: [start + i]} for i, pair in enumerate(pairs)]


def _rows(rows: list[dict[str, torch.Tensor]], pad_id: int) -> dict[str, torch.Tensor]:
    """Packed rows as one batch, each padded at its end to the longest. The padding goes on
    with its row's last sequence's positions and has no labels: it attends to that sequence,
    nothing attends to it or learns from it, and `real_tokens` leaves it out."""
    width = max(row["input_ids"].shape[1] for row in rows)
    padded = []
    for row in rows:
        n = width - row["input_ids"].shape[1]
        after = row["position_ids"][:, -1:] + 1 + torch.arange(n)
        padded.append({"input_ids": F.pad(row["input_ids"], (0, n), value=pad_id),
                       "labels": F.pad(row["labels"], (0, n), value=IGNORE_INDEX),
                       "position_ids": torch.cat([row["position_ids"], after], dim=1)})
    batch = {key: torch.cat([row[key] for row in padded]) for key in padded[0]}
    batch[REAL_TOKENS] = torch.tensor(sum(row["input_ids"].numel() for row in rows))
    return batch
