"""How long and how a job trains: `auto` values picked from the rows, epochs, class-balanced
sampling and early stopping on the validation loss."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
from safetensors.torch import load_file
from transformers import PreTrainedTokenizerBase

from events.recipe import HyperparameterOverrides, Recipe, RecipeError, load_recipe_file
from finetune.data import IGNORE_INDEX
from finetune.early_stopping import BEST_DIR
from finetune.hyperparameters import auto_batch_size, auto_epochs, auto_learning_rate, pick
from finetune.preflight import build_report
from finetune.sampling import BalancedSampler
from finetune.train import _cli
from recipes import load_recipe
from stagefiles.jobspec import PROGRESS_LOG, TRAINING_RESULT, ProgressLine, TrainingResult
from tests.finetune.test_train import _spec

ROWS = [{"text": f"ticket {i} about {topic}", "label": label}
        for i, (topic, label) in enumerate([("sparks", "emergency")] * 15 + [("a bill", "accounts")]
                                           * 3)]


@pytest.mark.parametrize(("rows", "epochs"), [(400, 3.0), (100, 10.0), (50, 10.0),
                                              (200_000, 1.0), (20_000, 2.5)])
def test_auto_epochs_show_small_sets_more_passes_and_large_ones_fewer(
        rows: int, epochs: float) -> None:
    assert auto_epochs(rows) == epochs


@pytest.mark.parametrize(("rows", "longest", "batch"), [
    (400, 60, 8), (10, 60, 8), (1_000, 60, 8), (2_048, 60, 32), (100_000, 60, 64),
    (400, 2_000, 4), (100_000, 512, 16), (400, 20_000, 1)])
def test_auto_batch_grows_with_rows_and_shrinks_with_long_rows(
        rows: int, longest: int, batch: int) -> None:
    assert auto_batch_size(rows, longest) == batch


def test_auto_learning_rate_scales_with_the_root_of_the_batch_and_is_capped() -> None:
    assert auto_learning_rate(8) == 5e-4
    assert auto_learning_rate(16) == pytest.approx(7.1e-4)
    assert auto_learning_rate(64) == 1e-3
    assert auto_learning_rate(1) == pytest.approx(1.8e-4)


def _grid(tmp: Path, write_jsonl: Callable, rows: list, **train: object) -> Recipe:
    recipe = load_recipe("grid-ticket-routing")
    return recipe.model_copy(update={
        "data": recipe.data.model_copy(update={"train_file": str(
            write_jsonl(tmp / "t.jsonl", rows))}),
        "train": recipe.train.model_copy(update=train)})


def test_the_preflight_picks_auto_values_and_the_report_says_what(
        tmp_path: Path, write_jsonl: Callable, tokenizer: PreTrainedTokenizerBase) -> None:
    rows = [{"text": f"Ticket {i}: a matter for the team", "label": "metering"}
            for i in range(40)]
    recipe = _grid(tmp_path, write_jsonl, rows, epochs="auto", batch_size="auto",
                   learning_rate="auto")
    report = build_report(recipe, tokenizer, tmp_path / "job")
    picked = report.picked
    assert picked is not None
    assert (picked.auto, picked.rows, picked.epochs, picked.batch_size) == (
        ["epochs", "batch_size", "learning_rate"], 40, 10.0, 8)
    assert picked.max_steps == 50 and picked.learning_rate == 5e-4  # 10 x 40 / 8
    frozen = picked.applied_to(recipe)
    assert frozen.train.picked() and frozen.train.max_steps == 50
    assert ("picked (epochs, batch_size, learning_rate auto): 10 epochs of 40 rows = 50 "
            "steps of batch 8, learning rate 0.0005") in report.summary()
    assert "picked" in report.to_text()


def test_epochs_given_as_a_number_set_the_steps_and_nothing_else(
        tmp_path: Path, write_jsonl: Callable, tokenizer: PreTrainedTokenizerBase) -> None:
    rows = [{"text": f"Ticket {i}: a matter for the team", "label": "metering"}
            for i in range(30)]
    recipe = _grid(tmp_path, write_jsonl, rows, epochs=2, batch_size=4,
                   gradient_accumulation_steps=2)
    picked = pick(recipe, 30, 20)
    assert picked is not None and picked.auto == []
    assert (picked.max_steps, picked.batch_size, picked.learning_rate) == (
        8, 4, recipe.train.learning_rate)  # ceil(2 x 30 / (4 x 2))
    assert pick(load_recipe("grid-ticket-routing"), 30, 20) is None  # steps given: nothing to do


def test_a_step_count_asked_for_replaces_the_recipes_epochs() -> None:
    recipe = load_recipe("grid-ticket-routing")
    recipe = recipe.model_copy(update={"train": recipe.train.model_copy(
        update={"epochs": "auto"})})
    applied = HyperparameterOverrides(max_steps=7).apply(recipe)
    assert (applied.train.max_steps, applied.train.epochs) == (7, None)
    assert HyperparameterOverrides(epochs=2).apply(recipe).train.epochs == 2.0
    with pytest.raises(ValueError, match="give max_steps or epochs, not both"):
        HyperparameterOverrides(max_steps=7, epochs=2)
    with pytest.raises(ValueError, match=r"batch_size\.int\n  Input should be less than or "
                       "equal to 256"):
        HyperparameterOverrides(batch_size=512)


@pytest.mark.parametrize(("train", "message"), [
    ({"early_stopping_patience": 2}, "train.early_stopping_patience: needs train.eval_steps"),
    ({"learning_rate": 0.5}, "train.learning_rate: must be above 0 and at most 0.01, or auto"),
    ({"batch_size": 0}, "train.batch_size: must be 1 to 1024, or auto"),
    ({"epochs": 0}, "train.epochs: must be above 0 and at most 100, or auto"),
    ({"epochs": "many"}, "train.epochs"),
])
def test_bad_training_values_are_refused_naming_the_field(
        tmp_path: Path, train: dict, message: str) -> None:
    source = Path(load_recipe("grid-ticket-routing").data.train_file or "")
    raw = load_recipe("grid-ticket-routing").model_dump(mode="json", exclude_none=True)
    raw["train"] |= train
    raw["data"]["train_file"] = str(source)
    path = tmp_path / "r.yaml"
    path.write_text(json.dumps(raw))
    with pytest.raises(RecipeError, match=message):
        load_recipe_file(path)


def _examples(answers: list[int]) -> list[dict[str, list[int]]]:
    return [{"input_ids": [1, 2, a], "attention_mask": [1, 1, 1],
             "labels": [IGNORE_INDEX, IGNORE_INDEX, a]} for a in answers]


def test_balanced_sampling_draws_each_answer_equally_often_and_is_seeded_per_epoch() -> None:
    sampler = BalancedSampler(_examples([7] * 90 + [8] * 10), seed=3)
    drawn = []
    for epoch in range(20):
        sampler.set_epoch(epoch)
        drawn += list(sampler)
    share = Counter(i >= 90 for i in drawn)[True] / len(drawn)
    assert 0.45 < share < 0.55  # 10% of the rows, half of the draws
    sampler.set_epoch(4)
    first = list(sampler)
    again = BalancedSampler(_examples([7] * 90 + [8] * 10), seed=3)
    again.set_epoch(4)
    assert list(again) == first  # every rank, and a resumed run, draw the same order
    again.set_epoch(5)
    assert list(again) != first


def test_early_stopping_stops_after_patience_and_keeps_the_best_steps_adapter(
    tmp_path: Path, make_recipe: Callable[..., Recipe], write_jsonl: Callable
) -> None:
    # min_delta this large makes no later loss a new best: the first validation stays best.
    recipe = make_recipe(write_jsonl(tmp_path / "train.jsonl", ROWS),
                         data={"validation_split": 0.25},
                         train={"max_steps": 20, "eval_steps": 1, "early_stopping_patience": 2,
                                "early_stopping_min_delta": 100.0, "class_balance": True,
                                "learning_rate": 5e-3})
    assert _cli([str(_spec(tmp_path, recipe))]) == 0
    job = tmp_path / "job"
    result = TrainingResult.read(job / TRAINING_RESULT)
    assert (result.steps, result.best_step, result.stopped_early) == (3, 1, True)
    lines = [ProgressLine.model_validate_json(x) for x in (job / PROGRESS_LOG).read_text().split()]
    validation = [p for p in lines if p.stage == "validation"]
    assert [p.step for p in validation] == [1, 2, 3]
    assert result.validation_loss == pytest.approx(validation[0].loss)
    saved = load_file(Path(result.adapter_dir) / "adapter_model.safetensors")
    best = load_file(job / BEST_DIR / "adapter.safetensors")
    assert saved.keys() == best.keys() and all((saved[k] == best[k]).all() for k in saved)
    assert validation[2].loss != pytest.approx(validation[0].loss)  # step 3's weights differ


def test_without_early_stop_the_last_step_can_be_the_best(
    tmp_path: Path, make_recipe: Callable[..., Recipe], write_jsonl: Callable
) -> None:
    recipe = make_recipe(write_jsonl(tmp_path / "train.jsonl", ROWS),
                         data={"validation_split": 0.25},
                         train={"max_steps": 4, "eval_steps": 2, "early_stopping_patience": 5,
                                "early_stopping_min_delta": 0.0, "learning_rate": 1e-3})
    assert _cli([str(_spec(tmp_path, recipe))]) == 0
    result = TrainingResult.read(tmp_path / "job" / TRAINING_RESULT)
    assert result.steps == 4 and not result.stopped_early
    lines = [ProgressLine.model_validate_json(x)
             for x in (tmp_path / "job" / PROGRESS_LOG).read_text().split()]
    losses = {p.step: p.loss for p in lines if p.stage == "validation"}
    assert result.best_step == min(losses, key=lambda s: losses[s])
    assert result.validation_loss == pytest.approx(min(losses.values()))


def test_a_resumed_run_goes_on_counting_from_the_best_it_had(
        tmp_path: Path, tiny_model_dir: Path) -> None:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from finetune.early_stopping import EarlyStopping, Validation

    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir),
                           LoraConfig(r=2, target_modules="all-linear"))
    first = EarlyStopping(tmp_path, patience=2, min_delta=0.0, is_main=True)
    assert not first.should_stop(Validation(1.0), 10, model)
    assert not first.should_stop(Validation(1.5), 20, model)  # one without a new best
    resumed = EarlyStopping(tmp_path, patience=2, min_delta=0.0, is_main=True)
    assert resumed.best is not None and (resumed.best.step, resumed.best.stale) == (10, 1)
    assert resumed.should_stop(Validation(1.2), 30, model)  # the second: stop
    assert resumed.restore(model) == 10
