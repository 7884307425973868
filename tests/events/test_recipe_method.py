"""train.method: sft, dpo or orpo, each with the data it can learn from."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from events.recipe import HyperparameterOverrides, Recipe, RecipeError
from events.recipe_train import TrainMethod


def _recipe(data: dict[str, Any] | None = None, train: dict[str, Any] | None = None) -> Recipe:
    return Recipe.model_validate({
        "name": "pairs", "sector": "general", "description": "test",
        "data": {"train_file": "pairs.jsonl", "format": "preference", **(data or {})},
        "train": {"method": "dpo", **(train or {})},
        "eval": {"tasks": [{"name": "t"}]}, "gate": {"task": "t"}})


def test_dpo_defaults_follow_the_papers() -> None:
    train = _recipe().train
    assert (train.method, train.beta, train.dpo_loss, train.orpo_lambda) == (
        TrainMethod.dpo, 0.1, "sigmoid", 0.1)


@pytest.mark.parametrize(("data", "train", "message"), [
    ({"format": "prompt_completion", "prompt_template": "p", "completion_template": "c"}, {},
     "train.method dpo: needs data.format preference"),
    ({}, {"method": "sft"}, "data.format preference: needs train.method dpo or orpo"),
    ({}, {"beta": 0}, "train.beta"),
    ({}, {"beta": True}, "train.beta"),
    ({}, {"dpo_loss": "hinge"}, "train.dpo_loss"),
    ({}, {"method": "ppo"}, "train.method"),
    ({}, {"class_balance": True}, "train.class_balance: not for train.method dpo"),
])
def test_a_method_without_its_data_or_with_bad_settings_is_refused(
        data: dict[str, Any], train: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        _recipe(data, train)


def test_a_request_switches_the_method_and_beta_within_the_data_it_has() -> None:
    tuned = HyperparameterOverrides(method="orpo", beta=0.5).apply(_recipe())
    assert (tuned.train.method, tuned.train.beta) == (TrainMethod.orpo, 0.5)
    with pytest.raises(RecipeError, match=r"overrides: .*data.format preference"):
        HyperparameterOverrides(method="sft").apply(_recipe())
    with pytest.raises(ValidationError, match="beta"):
        HyperparameterOverrides(beta="0.5")
