"""`data.eval_file`: the gate task's YAML over the tenant's own rows becomes the gate's task;
the recipe's own test set stays as a reported task."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from events.recipe import RecipeError
from recipes import load_recipe
from stagefiles.tasks import eval_data_files, materialise_one


def test_the_own_task_gates_and_the_recipes_set_is_reported(tmp_path: Path) -> None:
    own = tmp_path / "own.jsonl"
    own.write_text('{"text": "Acme cuts its dividend", "label": 0}\n')
    recipe = load_recipe("market-news-sentiment")
    gated = recipe.model_copy(update={"data": recipe.data.with_eval(str(own), None)}
                              ).gated_on_own_eval()
    assert [t.name for t in gated.eval.tasks] == [
        "market_news_sentiment_own", "market_news_sentiment", "general_knowledge_guard"]
    assert gated.gate.task == "market_news_sentiment_own"
    assert gated.gated_on_own_eval() == gated  # idempotent
    first = gated.eval.tasks[0]
    config = yaml.safe_load(materialise_one(Path(first.yaml or ""), first.name, first.data_file))
    assert config["task"] == "market_news_sentiment_own"
    assert config["dataset_kwargs"]["data_files"] == {"test": str(own)}
    assert config["doc_to_text"] == yaml.safe_load(Path(first.yaml or "").read_text())[
        "doc_to_text"]
    assert own in eval_data_files(gated.eval)  # the pre-flight's overlap reads it


def test_a_built_in_gate_task_cannot_take_own_rows(tmp_path: Path) -> None:
    recipe = load_recipe("market-news-sentiment")
    tasks = [t.model_copy(update={"yaml": None}) for t in recipe.eval.tasks]
    built_in = recipe.model_copy(update={
        "eval": recipe.eval.model_copy(update={"tasks": tasks}),
        "data": recipe.data.with_eval(str(tmp_path / "x.jsonl"), None)})
    with pytest.raises(RecipeError, match=r"data\.eval_file: the gate task"):
        built_in.gated_on_own_eval()


def test_eval_file_and_eval_split_exclude_each_other() -> None:
    data = load_recipe("market-news-sentiment").data.model_dump()
    with pytest.raises(ValueError, match=r"data\.eval_split: give it only without eval_file"):
        type(load_recipe("market-news-sentiment").data).model_validate(
            data | {"eval_file": "x.jsonl", "eval_split": 0.2})
