"""Before training, the pre-flight says when the gate cannot tell a gain from noise on the
documents it will score, and when training rows are also evaluation documents."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from transformers import PreTrainedTokenizerBase

from events.recipe import HyperparameterOverrides, Recipe
from finetune.gate_noise import gate_noise
from finetune.preflight import build_report
from recipes import load_recipe

GRID = "grid-ticket-routing"
TEST = Path(__file__).resolve().parents[2] / "recipes/energy/grid_ticket_routing/data/test.jsonl"


def _limited(limit: int | None, **gate: object) -> Recipe:
    recipe = load_recipe(GRID)
    if limit is not None:
        recipe = HyperparameterOverrides(eval_limit=limit).apply(recipe)
    return recipe.model_copy(update={"gate": recipe.gate.model_copy(update=gate)})


def test_the_shipped_test_set_leaves_room_for_a_real_gain() -> None:
    noise = gate_noise(_limited(None))
    assert noise is not None and noise.verdict == "ok"
    assert (noise.documents, round(noise.combined_stderr, 3), round(noise.needed_gain, 3)) == (
        200, 0.050, 0.100)
    assert noise.possible_gain == pytest.approx(0.8)  # five teams


def test_a_small_limit_is_warned_about_with_the_numbers() -> None:
    noise = gate_noise(_limited(20))
    assert noise is not None and noise.verdict == "warn"
    assert noise.sentence == (
        "20 documents of grid_ticket_routing leave a combined stderr of up to 0.162, so the "
        "gate needs a gain of 0.324 (2.0 x stderr, at least min_gain 0.050) where a perfect "
        "model gains 0.800 over a guessing base, above gate.max_needed_gain 0.250: raise "
        "eval.limit or give more evaluation rows.")
    assert gate_noise(_limited(20, noise="refuse")).verdict == "refuse"  # type: ignore[union-attr]


def test_a_limit_no_model_can_pass_is_refused(
    tmp_path: Path, write_jsonl: Callable, tokenizer: PreTrainedTokenizerBase
) -> None:
    recipe = _limited(3)
    row = {"text": "Sparks from the pole", "label": "emergency"}
    train = write_jsonl(tmp_path / "t.jsonl", [row])
    recipe = recipe.model_copy(update={"data": recipe.data.model_copy(
        update={"train_file": str(train)})})
    report = build_report(recipe, tokenizer)
    assert not report.usable
    assert "3 documents of grid_ticket_routing leave a combined stderr of up to 0.500" in (
        report.reason)
    assert report.reason.endswith("no model can pass: raise eval.limit or give more "
                                  "evaluation rows.")
    assert "gate noise: 3 documents" in report.to_text()


@pytest.mark.parametrize(("action", "usable"), [("warn", True), ("refuse", False)])
def test_training_rows_found_in_the_evaluation_documents(
    tmp_path: Path, write_jsonl: Callable, tokenizer: PreTrainedTokenizerBase,
    action: str, usable: bool,
) -> None:
    leaked = [json.loads(line) for line in TEST.read_text().splitlines()[:2]]
    fresh = [{"text": f"Ticket number {i} about a tree on the line", "label": "forestry"}
             for i in range(6)]
    recipe = load_recipe(GRID)
    recipe = recipe.model_copy(update={"data": recipe.data.model_copy(update={
        "train_file": str(write_jsonl(tmp_path / "t.jsonl", leaked + fresh)),
        "eval_overlap": action, "max_eval_overlap": 0.1})})
    report = build_report(recipe, tokenizer)
    sentence = ("2 of 8 training rows (25.0%) share a string of 20+ characters with the "
                "evaluation documents, above data.max_eval_overlap 10.0%: those scores would "
                "measure memory, not the task")
    assert report.usable is usable
    assert (sentence in report.warnings) is usable and (sentence in report.reason) is not usable
    assert report.train.eval_overlap_rows == ["line 1", "line 2"]
