"""The preference benchmark's own arithmetic: every variant trains on the same first pairs,
and DPO's once-per-pair reference pass is counted into its second figure."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.preference_throughput import first_pairs, variants, with_reference
from recipes import load_recipe


def test_every_variant_trains_on_the_recipes_first_pairs(tmp_path: Path) -> None:
    recipe = first_pairs(load_recipe("citizen-reply-de-dpo"), 24, tmp_path / "pairs.jsonl")
    shipped = Path(load_recipe("citizen-reply-de-dpo").data.train_file or "")
    assert (tmp_path / "pairs.jsonl").read_text().splitlines() == (
        shipped.read_text().splitlines()[:24])
    assert {v.data.train_file for v in variants(recipe).values()} == {
        str(tmp_path / "pairs.jsonl")}


def test_the_reference_pass_is_counted_into_the_second_figure() -> None:
    runs = [{"real_tokens": 1000, "tokens_per_s": 100.0, "reference_s": 10.0},
            {"real_tokens": 1000, "tokens_per_s": 50.0, "reference_s": 5.0}]
    assert with_reference(runs) == pytest.approx((1000 / 20 + 1000 / 25) / 2)
