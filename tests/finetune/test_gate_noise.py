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
from finetune.rows import DataValidationError
from recipes import load_recipe
from stagefiles.preflight_report import GateNoise

GRID = "grid-ticket-routing"
TEST = Path(__file__).resolve().parents[2] / "recipes/energy/grid_ticket_routing/data/test.jsonl"


def _limited(limit: int | None, **gate: object) -> Recipe:
    recipe = load_recipe(GRID)
    if limit is not None:
        recipe = HyperparameterOverrides(eval_limit=limit).apply(recipe)
    return recipe.model_copy(update={"gate": recipe.gate.model_copy(update=gate)})


def _scored_on(recipe: Recipe, rows: Path) -> Recipe:
    """The recipe with its gate task scored on `rows` instead of the shipped test set."""
    tasks = [t.model_copy(update={"data_file": str(rows)}) if t.name == recipe.gate.task else t
             for t in recipe.eval.tasks]
    return recipe.model_copy(update={"eval": recipe.eval.model_copy(update={"tasks": tasks})})


def _skewed(tmp_path: Path, write_jsonl: Callable, other: str = "forestry") -> Path:
    """200 tickets, 120 of them emergencies: the majority answer scores 0.6."""
    rows = [{"text": f"Ticket {i}", "label": "emergency" if i < 120 else other}
            for i in range(200)]
    return write_jsonl(tmp_path / "test.jsonl", rows)


def test_the_shipped_test_set_leaves_room_for_a_real_gain() -> None:
    noise = gate_noise(_limited(None))
    assert noise is not None and noise.verdict == "ok"
    assert (noise.documents, noise.min_detectable_lead, noise.majority_share) == (
        200, 0.025, 0.2)
    assert (noise.needed_gain, noise.possible_gain) == pytest.approx((0.05, 0.8))
    assert noise.combined_stderr is None
    assert noise.sentence == (
        "200 documents of grid_ticket_routing (the commonest answer 20.0% of them): the "
        "paired test at alpha 0.05 needs at least 5 documents only the tuned model gets right, "
        "a lead of 0.025, if none go the other way (a model that also loses one needs 7, a "
        "lead of 0.030), so the gate needs a lead of 0.050 over the majority answer (at least "
        "majority_margin 0.050) where a perfect model leads by 0.800.")


def test_a_skewed_test_set_leaves_less_room_over_the_majority_answer(
    tmp_path: Path, write_jsonl: Callable
) -> None:
    recipe = _scored_on(_limited(None), _skewed(tmp_path, write_jsonl))
    noise = gate_noise(recipe)
    assert noise is not None and noise.verdict == "ok"
    assert (noise.documents, noise.min_detectable_lead) == (200, 0.025)
    assert noise.majority_share == pytest.approx(0.6)
    assert (noise.needed_gain, noise.possible_gain) == pytest.approx((0.05, 0.4))
    assert "over the majority answer (at least majority_margin 0.050)" in noise.sentence
    # a min_gain of 0.5 leaves 0.3 of the 0.8 over a guessing base, less than the 0.35 left
    # over the majority answer: that comparison is reported, and its gain is above 0.25
    noise = gate_noise(recipe.model_copy(update={"gate": recipe.gate.model_copy(
        update={"min_gain": 0.5})}))
    assert noise is not None and noise.verdict == "warn"
    assert (noise.needed_gain, noise.possible_gain) == pytest.approx((0.5, 0.8))
    assert "over a guessing base (at least min_gain 0.500)" in noise.sentence


def test_an_unreadable_label_falls_back_to_chance(tmp_path: Path, write_jsonl: Callable
                                                  ) -> None:
    noise = gate_noise(_scored_on(_limited(None), _skewed(tmp_path, write_jsonl, "weather")))
    assert noise is not None and noise.verdict == "ok" and noise.majority_share is None
    assert (noise.needed_gain, noise.possible_gain) == pytest.approx((0.05, 0.8))
    assert noise.sentence.startswith("200 documents of grid_ticket_routing: the paired test")


def test_a_bad_evaluation_row_is_refused_by_line_and_quoted_nowhere(tmp_path: Path) -> None:
    """Before, the row error escaped the stage (a retryable exit 1 with a traceback);
    lm-eval would stop on such a row after the training was paid for."""
    secret = "SECRET-MARKER-7f3a"
    rows = tmp_path / "test.jsonl"
    rows.write_text(f'{{"text": "a", "label": "emergency"}}\n{{"text": "{secret}", \n'
                    f'["{secret}"]\n')
    with pytest.raises(DataValidationError) as refused:
        gate_noise(_scored_on(_limited(None), rows))
    said = str(refused.value)
    assert "2 problem(s) in 3 row(s) read" in said and "line 2:" in said and "line 3:" in said
    assert secret not in said


def test_a_small_limit_is_warned_about_with_the_numbers() -> None:
    assert gate_noise(_limited(20)).verdict == "ok"  # type: ignore[union-attr]  # 0.25 = max
    noise = gate_noise(_limited(20, max_needed_gain=0.2))
    assert noise is not None and noise.verdict == "warn"
    assert (noise.min_detectable_lead, noise.majority_share) == (0.25, 0.3)
    assert noise.sentence == (
        "20 documents of grid_ticket_routing (the commonest answer 30.0% of them): the paired "
        "test at alpha 0.05 needs at least 5 documents only the tuned model gets right, a lead "
        "of 0.250, if none go the other way (a model that also loses one needs 7, a lead of "
        "0.300), so the gate needs a lead of 0.250 over the majority answer (at least "
        "majority_margin 0.050) where a perfect model leads by 0.700, above "
        "gate.max_needed_gain 0.200: raise eval.limit or give more evaluation rows.")
    noise = gate_noise(_limited(20, max_needed_gain=0.2, noise="refuse"))
    assert noise is not None and noise.verdict == "refuse"


def test_alpha_one_leaves_only_the_margins() -> None:
    noise = gate_noise(_limited(20, alpha=1.0))
    assert noise is not None and noise.verdict == "ok" and noise.min_detectable_lead == 0
    assert noise.needed_gain == pytest.approx(0.05)
    assert "alpha 1.0 switches the paired test off" in noise.sentence


def test_four_documents_that_must_all_favour_tuned_are_refused() -> None:
    noise = gate_noise(_limited(4, alpha=0.1))  # 0.5**4 < 0.1: all four must go to tuned
    assert noise is not None and noise.verdict == "refuse"
    assert noise.needed_gain == 1.0
    assert noise.sentence.endswith("no model can pass: raise eval.limit or give more "
                                   "evaluation rows.")


def test_a_limit_no_model_can_pass_is_refused(
    tmp_path: Path, write_jsonl: Callable, tokenizer: PreTrainedTokenizerBase
) -> None:
    recipe = _limited(4)
    row = {"text": "Sparks from the pole", "label": "emergency"}
    train = write_jsonl(tmp_path / "t.jsonl", [row])
    recipe = recipe.model_copy(update={"data": recipe.data.model_copy(
        update={"train_file": str(train)})})
    report = build_report(recipe, tokenizer)
    assert not report.usable
    assert report.reason == (
        "4 documents of grid_ticket_routing cannot pass the paired test at alpha 0.05: even "
        "with the tuned model alone right on all of them p is 0.0625; no model can pass: "
        "raise eval.limit or give more evaluation rows.")
    assert "gate noise: 4 documents" in report.to_text()


def test_a_report_from_before_the_paired_gate_still_reads() -> None:
    old = {"documents": 20, "combined_stderr": 0.162, "needed_gain": 0.324,
           "possible_gain": 0.8, "verdict": "warn", "sentence": "20 documents ..."}
    noise = GateNoise.model_validate_json(json.dumps(old))
    assert (noise.combined_stderr, noise.min_detectable_lead, noise.majority_share) == (
        0.162, None, None)


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
