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


def test_the_table_gives_each_runs_paired_leads_verdict_and_kept_steps() -> None:
    paired = {"diff": 0.093, "ci_low": 0.04, "ci_high": 0.147, "p_value": 0.0004}
    run = {"recipe": "market-news-sentiment", "early_stopping_metric": "accuracy",
           "majority": 0.673, "base": 0.193, "tuned": 0.767, "vs_majority": paired,
           "vs_base": None, "gate_passed": False, "gate_reason": "... Failed: collapsed.",
           "steps": 110, "best_step": 80, "stopped_early": True, "training_s": 348.4,
           "kept_by": {"loss": [70, None], "accuracy": [80, 110]}}
    rows = real_data.table([run, {**run, "recipe": "comment-moderation-de",
                                  "gate_passed": True, "stopped_early": False}]).splitlines()
    assert rows[2] == ("| `market-news-sentiment` | accuracy | 0.673 | 0.193 | 0.767 | +0.093 "
                       "[+0.040, +0.147], p 0.0004 | n/a | rejected: collapsed | 110 | 80 (70+ "
                       "/ 80) | 348 s |")
    assert rows[3].startswith("| `comment-moderation-de` |") and "| passed |" in rows[3]
    assert "80 (70 / 80)" in rows[3]


def test_epochs_from_the_command_line_are_a_number_or_auto() -> None:
    """`--epochs 1` once reached the request as the string "1", which it refuses."""
    from events.recipe import HyperparameterOverrides

    assert HyperparameterOverrides(epochs=real_data._epochs("1")).epochs == 1.0
    assert HyperparameterOverrides(epochs=real_data._epochs("auto")).epochs == "auto"
    with pytest.raises(ValueError):
        real_data._epochs("one")
