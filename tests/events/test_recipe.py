import importlib
import re
from pathlib import Path

import pytest
import yaml

from events.messages import FineTuneRequested
from events.recipe import HyperparameterOverrides, RecipeError, load_recipe_file
from recipes import RECIPES_DIR, load_recipe, recipe_files

SHIPPED = sorted(RECIPES_DIR.glob("*/*/recipe.yaml"))


@pytest.mark.parametrize("path", SHIPPED, ids=[p.parent.name for p in SHIPPED])
def test_every_shipped_recipe_is_valid_and_its_files_exist(path: Path) -> None:
    recipe = load_recipe_file(path)
    assert Path(recipe.data.train_file).is_file()
    for task in recipe.eval.tasks:
        assert task.yaml is None or Path(task.yaml).is_file()


def test_at_least_one_recipe_ships() -> None:
    assert "grid-ticket-routing" in recipe_files()


def _write(tmp_path: Path, **changes: object) -> Path:
    raw = yaml.safe_load(recipe_files()["grid-ticket-routing"].read_text())
    raw.update(changes)
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_unknown_key_names_file_and_field(tmp_path: Path) -> None:
    path = _write(tmp_path, train={"learning_rte": 1e-4})
    with pytest.raises(RecipeError) as err:
        load_recipe_file(path)
    assert str(path) in str(err.value)
    assert "train.learning_rte" in str(err.value)


def test_bad_choice_lists_allowed_values(tmp_path: Path) -> None:
    with pytest.raises(RecipeError, match=r"sector.*'health'"):
        load_recipe_file(_write(tmp_path, sector="mining"))


def test_gate_must_name_an_evaluated_task(tmp_path: Path) -> None:
    with pytest.raises(RecipeError, match=r"gate.task 'nope'"):
        load_recipe_file(_write(tmp_path, gate={"task": "nope"}))


def test_guard_must_name_an_evaluated_task(tmp_path: Path) -> None:
    gate = {"task": "grid_ticket_routing", "guards": [{"task": "trivia"}]}
    with pytest.raises(RecipeError, match=r"gate.guards.0.task 'trivia'"):
        load_recipe_file(_write(tmp_path, gate=gate))


@pytest.mark.parametrize(("alpha", "message"), [
    (0, "gate.alpha: Input should be greater than 0"),
    (-0.05, "gate.alpha: Input should be greater than 0"),
    (1.5, "gate.alpha: Input should be less than or equal to 1"),
])
def test_gate_alpha_is_a_probability_above_zero(tmp_path: Path, alpha: float,
                                                message: str) -> None:
    gate = {"task": "grid_ticket_routing", "alpha": alpha}
    with pytest.raises(RecipeError, match=re.escape(message)):
        load_recipe_file(_write(tmp_path, gate=gate))


def test_gate_alpha_defaults_to_five_percent_and_one_is_allowed() -> None:
    gate = load_recipe("grid-ticket-routing").gate
    assert gate.alpha == 0.05
    assert gate.model_validate({**gate.model_dump(), "alpha": 1}).alpha == 1.0


def test_not_yaml_and_missing_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [unclosed")
    with pytest.raises(RecipeError, match="not valid YAML"):
        load_recipe_file(bad)
    with pytest.raises(RecipeError, match="no such recipe file"):
        load_recipe_file(tmp_path / "absent.yaml")


def test_unknown_recipe_suggests_a_name() -> None:
    with pytest.raises(RecipeError, match="Did you mean 'grid-ticket-routing'"):
        load_recipe("grid-ticket-routin")


def test_overrides_apply_and_are_bounded() -> None:
    recipe = load_recipe("grid-ticket-routing")
    tuned = HyperparameterOverrides(max_steps=7, lora_r=4, eval_limit=10).apply(recipe)
    assert (tuned.train.max_steps, tuned.lora.r, tuned.eval.limit) == (7, 4, 10)
    assert recipe.train.max_steps != 7  # the original is untouched
    with pytest.raises(ValueError, match="max_steps"):
        HyperparameterOverrides(max_steps=10**7)


GENERATORS = sorted(RECIPES_DIR.glob("*/*/generate.py"))


@pytest.mark.parametrize("script", GENERATORS, ids=[p.parent.name for p in GENERATORS])
def test_generated_data_matches_the_generator(script: Path, tmp_path: Path) -> None:
    """Every committed data file is exactly what its generator writes: nobody edited it."""
    module = ".".join(script.relative_to(RECIPES_DIR.parent).with_suffix("").parts)
    generator = importlib.import_module(module)
    generator.generate(tmp_path)
    committed = sorted(p.name for p in (generator.HERE / "data").iterdir())
    assert sorted(p.name for p in tmp_path.iterdir()) == committed
    for name in committed:
        assert (tmp_path / name).read_bytes() == (generator.HERE / "data" / name).read_bytes()


def test_data_needs_a_source_and_bounded_fractions(tmp_path: Path) -> None:
    raw = yaml.safe_load(SHIPPED[0].read_text())
    for data, fragment in [
        ({k: v for k, v in raw["data"].items() if k not in ("train_file", "dataset")},
         "needs train_file"),
        ({**raw["data"], "validation_split": 1.5}, "data.validation_split"),
        ({**raw["data"], "max_bad_fraction": -0.1}, "data.max_bad_fraction"),
        ({**raw["data"], "validation_split": 0.1, "validation_file": "v.jsonl"},
         "data.validation_split: give it only without validation_file"),
    ]:
        with pytest.raises(RecipeError, match=re.escape(fragment)):
            load_recipe_file(_write(tmp_path, data=data))


def test_a_request_switches_the_data_source() -> None:
    data = load_recipe("grid-ticket-routing").data
    hub = data.with_source(dataset="org/tickets")
    assert (hub.dataset, hub.train_file, hub.validation_file) == ("org/tickets", None, None)
    assert data.with_source(train_file="/d/t.jsonl").train_file == "/d/t.jsonl"
    assert data.with_source() == data
    with pytest.raises(ValueError, match="at most one of 'train_file' or 'dataset'"):
        FineTuneRequested(recipe="grid-ticket-routing", train_file="t.jsonl", dataset="org/x")
