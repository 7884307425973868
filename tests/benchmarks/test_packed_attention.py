"""`benchmarks.packed_attention` runs every variant on the trainer's own packed batches."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.packed_attention import VARIANTS, measure
from recipes import load_recipe


def test_each_attention_and_precision_is_timed_on_the_same_batches(
        tiny_model_dir: Path) -> None:
    recipe = load_recipe("grid-ticket-routing")
    recipe = recipe.model_copy(update={"model": recipe.model.model_copy(
        update={"base": str(tiny_model_dir)})})
    got = measure(recipe, tiny_model_dir, batches=3)
    assert got["batches"] == 2 and got["tokens"] > 2 * recipe.train.batch_size
    assert set(got["tokens_per_s"]) == {f"{a}, {p}" for a, p in VARIANTS}
    assert all(rate > 0 for rate in got["tokens_per_s"].values())
    for precision, ratio in got["per_example_vs_sdpa"].items():
        assert ratio == pytest.approx(got["tokens_per_s"][f"per-example, {precision}"]
                                      / got["tokens_per_s"][f"sdpa, {precision}"])
