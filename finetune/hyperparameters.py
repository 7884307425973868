"""`auto` epochs, batch size and learning rate, picked from the rows the pre-flight read.

A managed service cannot ask a partner to know that 400 rows need more passes than 40,000,
or that a batch of long abstracts needs fewer rows than a batch of tweets. The rules, in
order (each value given as a number is kept):

- **batch size**: about one row in 64 (a power of two, 8 to 64), halved while a batch of the
  longest rows would exceed `MAX_BATCH_TOKENS`, down to 1;
- **epochs**: 3 passes; more (up to 10) when 3 passes would show the model fewer than
  `MIN_EXAMPLES_SEEN` examples, fewer (down to one) when they would exceed
  `MAX_EXAMPLES_SEEN`;
- **learning rate**: `BASE_LR` at batch 8, scaled by the square root of the batch (the
  usual rule for Adam), at most `MAX_LR`;
- **steps**: epochs x rows / (batch x gradient accumulation x processes), rounded up, at least 2
  (so a warmup step never is the whole run).

They are the usual LoRA starting points, checked (one schedule per recipe, never on a test
split) with the real-data benchmark: `benchmarks.real_data`, figures in docs/real-data.md.
"""

from __future__ import annotations

import math

from events.recipe import Recipe
from events.recipe_train import AUTO
from stagefiles.preflight_report import Picked

MIN_EXAMPLES_SEEN = 1_000
MAX_EXAMPLES_SEEN = 50_000
DEFAULT_EPOCHS = 3
MAX_EPOCHS = 10
ROWS_PER_BATCH_ROW = 64
MIN_BATCH, MAX_BATCH = 8, 64
MAX_BATCH_TOKENS = 8_192
BASE_LR = 5e-4
MAX_LR = 1e-3


def auto_batch_size(rows: int, max_tokens: int) -> int:
    size = MIN_BATCH
    while size * 2 <= min(MAX_BATCH, rows / ROWS_PER_BATCH_ROW):
        size *= 2
    while size > 1 and size * max_tokens > MAX_BATCH_TOKENS:
        size //= 2
    return size


def auto_epochs(rows: int) -> float:
    seen = DEFAULT_EPOCHS * rows
    if seen < MIN_EXAMPLES_SEEN:
        return float(min(MAX_EPOCHS, math.ceil(MIN_EXAMPLES_SEEN / max(1, rows))))
    if seen > MAX_EXAMPLES_SEEN:
        return max(1.0, round(MAX_EXAMPLES_SEEN / rows, 2))
    return float(DEFAULT_EPOCHS)


def auto_learning_rate(batch_size: int) -> float:
    return min(MAX_LR, float(f"{BASE_LR * math.sqrt(batch_size / MIN_BATCH):.2g}"))


def pick(recipe: Recipe, rows: int, max_tokens: int) -> Picked | None:
    """What the recipe leaves to the data, picked for `rows` usable training rows of at most
    `max_tokens` tokens (after truncation); None when nothing is left to pick."""
    train = recipe.train
    if train.picked():
        return None
    auto = [name for name in ("epochs", "batch_size", "learning_rate")
            if getattr(train, name) == AUTO]
    batch = (auto_batch_size(rows, max_tokens) if train.batch_size == AUTO
             else int(train.batch_size))
    lr = (auto_learning_rate(batch) if train.learning_rate == AUTO
          else float(train.learning_rate))
    epochs = auto_epochs(rows) if train.epochs == AUTO else train.epochs
    steps = train.max_steps
    if epochs is not None:
        per_step = batch * train.gradient_accumulation_steps * train.num_processes
        steps = max(2, math.ceil(float(epochs) * rows / per_step))
    return Picked(auto=auto, rows=rows, epochs=None if epochs is None else float(epochs),
                  batch_size=batch, learning_rate=lr, max_steps=steps)
