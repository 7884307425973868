"""The real-data benchmark's rows (`benchmarks.real_data`): disjoint training and evaluation
samples, in each recipe's columns, every label one of its gate task's choices. Skips where
the optional real data sets are absent, like `tests/real_data/`."""

from __future__ import annotations

import json

import pytest

from benchmarks import real_data
from finetune.labels import task_labels
from recipes import load_recipe


@pytest.mark.parametrize("recipe", sorted(real_data.SETS))
def test_rows_are_disjoint_and_carry_the_tasks_labels(recipe: str) -> None:
    if not real_data.EVAL_DATA.is_dir():
        pytest.skip(f"optional real data {real_data.EVAL_DATA} is absent (set AIF_EVAL_DATA)")
    train, held_out = real_data.split(recipe, 400, 150)
    assert len(held_out) == 150 and 300 <= len(train) <= 400
    seen = {json.dumps(r, sort_keys=True) for r in train}
    assert not seen & {json.dumps(r, sort_keys=True) for r in held_out}
    assert real_data.split(recipe, 400, 150) == (train, held_out)  # seeded
    labels = task_labels(load_recipe(recipe))
    assert labels is not None
    for row in train + held_out:
        labels.check(row)
