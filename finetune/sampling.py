"""Class-balanced sampling of training rows (`train.class_balance`).

On skewed labels a model that answers the commonest class every time is already good at the
loss, so it learns the label prior first, and on a few hundred rows often nothing more
(docs/real-data.md). Drawing each row with weight 1 / (rows with the same answer) shows the
model every answer equally often. A row's answer is its trained tokens, so the rule needs no
label column and works for every data format; where every answer is unique (free text) all
weights are equal and the order is merely drawn with replacement.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

import torch
from torch.utils.data import Sampler

from finetune.data import IGNORE_INDEX, Example


def answer(example: Example) -> tuple[int, ...]:
    """The tokens the example is trained on: its answer, for a classification row."""
    return tuple(label for label in example["labels"] if label != IGNORE_INDEX)


class BalancedSampler(Sampler[int]):
    """Row indices drawn with replacement, equally often per answer; the draw is seeded by
    (seed, epoch), so every rank draws the same order and a resumed run draws what the
    interrupted one would have (`set_epoch` is called by accelerate's loader)."""

    def __init__(self, examples: list[Example], seed: int) -> None:
        answers = [answer(e) for e in examples]
        counts = Counter(answers)
        self.weights = torch.tensor([1.0 / counts[a] for a in answers], dtype=torch.double)
        self.seed, self.epoch = seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.weights)

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        drawn = torch.multinomial(self.weights, len(self.weights), replacement=True,
                                  generator=generator)
        yield from drawn.tolist()
