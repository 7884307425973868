"""Model selection on what the gate measures: the gate task's accuracy on the validation rows,
scored in training as lm-eval scores it, and early stopping that keeps the step it prefers
(`train.early_stopping_metric`)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import yaml
from transformers import AutoModelForCausalLM, PreTrainedTokenizerBase

from events.recipe import HyperparameterOverrides, Recipe, RecipeError, load_recipe_file
from events.recipe_eval import EvalTask
from events.recipe_train import TrainSection
from finetune.choice_accuracy import correct, gate_choices, loglikelihoods, questions
from finetune.data import Encoded, Split, read_examples
from finetune.early_stopping import EarlyStopping, Validation, kept
from finetune.labels import TaskLabels
from finetune.preflight import build_report
from finetune.train import EXIT_BAD_INPUT, _cli
from recipes import load_recipe
from stagefiles.jobspec import PROGRESS_LOG, TRAINING_RESULT, ProgressLine, TrainingResult
from tests.finetune.test_schedule import ROWS
from tests.finetune.test_train import _spec

TEAMS = ["emergency", "accounts", "metering"]
ROUTING = {"task": "t", "output_type": "multiple_choice", "description": "Sort the ticket.\n",
           "doc_to_text": "Ticket: {{ text }}\nTeam:", "doc_to_choice": TEAMS,
           "doc_to_target": "{{ " + json.dumps(TEAMS) + ".index(label) }}"}
QUIZ = {"task": "t", "output_type": "multiple_choice",  # choices from the row, a trailing space
        "doc_to_text": "Question: {{ question }}\nAnswer: ", "doc_to_choice": "{{ choices.text }}",
        "doc_to_target": "{{ choices.label.index(answerKey) }}"}
QUIZ_ROWS = [{"question": q, "choices": {"text": t, "label": ["A", "B", "C"][:len(t)]},
              "answerKey": k} for q, t, k in [
    ("What melts ice?", ["heat", "a cold wind", "salt water in the dark"], "A"),
    ("Which is a planet?", ["Mars", "the Moon"], "A"),
    ("What do plants need?", ["rocks", "sunlight", "plastic"], "B")]]


def _split(rows: list[dict]) -> Split:
    return Split("rows", len(rows), [Encoded(f"line {i}", row, {}, 0)
                                     for i, row in enumerate(rows, start=1)])


def test_the_prompt_is_rendered_as_lm_eval_renders_it() -> None:
    row = {"text": "sparks at pole 7", "label": "metering"}
    labels = TaskLabels(ROUTING)
    assert labels.prompt(row) == "Sort the ticket.\nTicket: sparks at pole 7\nTeam:"
    assert (labels.gold(row), labels.answer(row)) == (2, "metering")
    assert TaskLabels(QUIZ).gold(QUIZ_ROWS[2]) == 1


def test_each_choice_is_scored_as_lm_eval_scores_it(
        tiny_model_dir: Path, tokenizer: PreTrainedTokenizerBase) -> None:
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=1)
    cpu = torch.device("cpu")
    for config, rows in ((ROUTING, [{"text": f"ticket {i}: {t}", "label": t}
                                    for i, t in enumerate(TEAMS * 2)]), (QUIZ, QUIZ_ROWS)):
        labels = TaskLabels(config)
        asked = questions(labels, tokenizer, _split(rows))
        theirs = []
        for row in rows:
            requests = [Instance("loglikelihood", row, (labels.prompt(row), labels.delimiter + c),
                                 i) for i, c in enumerate(labels.choices(row))]
            theirs.append(torch.tensor([ll for ll, _ in lm.loglikelihood(requests)]))
        with torch.no_grad():
            ours = [loglikelihoods(model, q, cpu) for q in asked]
            right, right_norm = correct(model, asked, cpu), correct(model, asked, cpu, True)
        for mine, lm_eval in zip(ours, theirs, strict=True):
            assert mine.tolist() == pytest.approx(lm_eval.tolist(), rel=1e-4, abs=1e-4)
        golds = [labels.gold(r) for r in rows]
        lengths = [torch.tensor([len(c) for c in labels.choices(r)]) for r in rows]
        assert right == sum(int(t.argmax()) == g for t, g in zip(theirs, golds, strict=True))
        assert right_norm == sum(int((t / n).argmax()) == g
                                 for t, n, g in zip(theirs, lengths, golds, strict=True))


def test_a_row_the_prompt_template_fails_on_is_named_by_line(
        tokenizer: PreTrainedTokenizerBase) -> None:
    labels = TaskLabels({**ROUTING, "doc_to_text": "Ticket: {{ body }}"})
    with pytest.raises(ValueError, match="line 1: the gate task's doc_to_text fails on the row"):
        questions(labels, tokenizer, _split([{"text": "secret", "label": "accounts"}]))


def _tiny_peft(tiny_model_dir: Path) -> torch.nn.Module:
    from peft import LoraConfig, get_peft_model

    return get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir),
                          LoraConfig(r=2, target_modules="all-linear"))


def test_the_kept_step_is_the_best_accuracy_and_ties_go_to_the_lower_loss(
        tmp_path: Path, tiny_model_dir: Path) -> None:
    model = _tiny_peft(tiny_model_dir)
    (tmp_path / "loss").mkdir()
    (tmp_path / "accuracy").mkdir()
    by_loss = EarlyStopping(tmp_path / "loss", 2, 0.01, True, "loss")
    by_accuracy = EarlyStopping(tmp_path / "accuracy", 2, 0.01, True, "accuracy")
    figures = [(10, Validation(1.00, 0.50)),
               (20, Validation(0.80, 0.55)),   # the lowest loss
               (30, Validation(0.90, 0.70)),   # the best accuracy
               (40, Validation(0.85, 0.70)),   # equal accuracy, loss lower by > 0.01: a tie won
               (50, Validation(0.845, 0.705)),  # higher by less than min_delta, loss not lower
               (60, Validation(0.95, 0.60))]
    stops = {name: next((step for step, v in figures if stopper.should_stop(v, step, model)),
                        None) for name, stopper in (("loss", by_loss), ("accuracy", by_accuracy))}
    assert stops == {"loss": 40, "accuracy": 60}
    assert (by_loss.restore(model), by_accuracy.restore(model)) == (20, 40)
    # The same rule after the fact, on a run's validation figures (benchmarks.real_data).
    assert kept(figures, "loss", 2, 0.01) == (20, 40)
    assert kept(figures, "accuracy", 2, 0.01) == (40, 60)
    assert kept(figures[:4], "accuracy", 2, 0.01) == (40, None)  # would run on
    assert by_accuracy.chosen == Validation(0.85, 0.70)
    assert by_accuracy.chosen.describe() == "validation accuracy 0.700; validation loss 0.8500"


def test_the_reason_says_which_figure_chose_the_step() -> None:
    result = TrainingResult(adapter_dir="a", base_model_dir="b", steps=60, final_loss=0.5,
                            train_tokens=10, wall_s=1.0, files_sha256={}, best_step=40,
                            stopped_early=True, validation_loss=0.2311,
                            validation_accuracy=0.725)
    assert result.summary() == ("trained 60 steps, final loss 0.5000; stopped early, kept the "
                                "adapter of step 40 (validation accuracy 0.725; validation loss "
                                "0.2311)")
    by_loss = result.model_copy(update={"validation_accuracy": None, "stopped_early": False})
    assert by_loss.summary().endswith("kept the adapter of step 40 (validation loss 0.2311)")


@pytest.mark.parametrize(("change", "message"), [
    ({"train": {"early_stopping_metric": "f1"}}, r"train\.early_stopping_metric"),
    ({"train": {"early_stopping_metric": "accuracy", "early_stopping_patience": None}},
     "train.early_stopping_metric: accuracy needs train.early_stopping_patience"),
    ({"gate": {"metric": "f1"}}, "train.early_stopping_metric accuracy: the gate's metric is "
     "'f1', not acc or acc_norm"),
    ({"eval": {"num_fewshot": 5}}, "needs eval.num_fewshot 0 and eval.apply_chat_template"),
])
def test_a_bad_selection_metric_is_refused_naming_the_field(
        tmp_path: Path, change: dict, message: str) -> None:
    recipe = load_recipe("grid-ticket-routing")
    raw = recipe.model_dump(mode="json", exclude_none=True)
    raw["train"] |= {"early_stopping_metric": "accuracy", "eval_steps": 10,
                     "early_stopping_patience": 3}
    for section, values in change.items():
        raw[section] |= values
    raw["train"] = {k: v for k, v in raw["train"].items() if v is not None}
    raw["data"]["train_file"] = recipe.data.train_file
    path = tmp_path / "r.yaml"
    path.write_text(json.dumps(raw))
    with pytest.raises(RecipeError, match=message):
        load_recipe_file(path)
    with pytest.raises(ValueError, match=r"accuracy is not for train\.method dpo"):
        TrainSection(method="dpo", early_stopping_metric="accuracy", eval_steps=1,
                     early_stopping_patience=1)


def test_a_request_may_ask_for_the_other_metric_and_is_held_to_the_same_rules() -> None:
    recipe = load_recipe("market-news-sentiment")
    assert recipe.train.early_stopping_patience is not None
    asked = HyperparameterOverrides(early_stopping_metric="accuracy").apply(recipe)
    assert asked.train.early_stopping_metric == "accuracy"
    assert HyperparameterOverrides().apply(asked).train.early_stopping_metric == "accuracy"
    with pytest.raises(RecipeError, match="overrides: .*accuracy needs "
                       r"train\.early_stopping_patience"):
        HyperparameterOverrides(early_stopping_metric="accuracy").apply(
            load_recipe("grid-ticket-routing"))


def _accuracy_recipe(make_recipe: Callable[..., Recipe], train_file: Path,
                     task_yaml: Path | None, **train: object) -> Recipe:
    recipe = make_recipe(train_file, data={"validation_split": 0.25},
                         train={"early_stopping_metric": "accuracy", "eval_steps": 2,
                                "early_stopping_patience": 5, **train})
    if task_yaml is None:
        return recipe  # its gate task "t" is lm-eval's own: no choices of the recipe's
    return recipe.model_copy(update={"eval": recipe.eval.model_copy(update={
        "tasks": [EvalTask(name="t", yaml=str(task_yaml))]})})


def _task_yaml(tmp_path: Path, **changes: str) -> Path:
    path = tmp_path / "t.yaml"
    path.write_text(yaml.safe_dump({**ROUTING, "description": "", **changes}))
    return path


@pytest.mark.parametrize(("task", "reason"), [
    (None, "train.early_stopping_metric accuracy: the gate task 't' is not a multiple-choice "
     "task YAML of the recipe"),
    ({"doc_to_text": "Ticket: {{ body }}"}, "the gate task's doc_to_text fails on the row"),
])
def test_the_preflight_refuses_accuracy_it_could_not_score(
        tmp_path: Path, make_recipe: Callable[..., Recipe], write_jsonl: Callable,
        tokenizer: PreTrainedTokenizerBase, task: dict | None, reason: str) -> None:
    rows = write_jsonl(tmp_path / "train.jsonl", ROWS)
    recipe = _accuracy_recipe(make_recipe, rows, None if task is None
                              else _task_yaml(tmp_path, **task))
    report = build_report(recipe, tokenizer)
    assert not report.usable and reason in report.reason
    assert "sparks" not in report.reason  # never a row's text


def test_training_refuses_accuracy_without_a_choice_task(
        tmp_path: Path, make_recipe: Callable[..., Recipe], write_jsonl: Callable,
        capsys: pytest.CaptureFixture[str]) -> None:
    recipe = _accuracy_recipe(make_recipe, write_jsonl(tmp_path / "train.jsonl", ROWS), None)
    assert _cli([str(_spec(tmp_path, recipe))]) == EXIT_BAD_INPUT
    assert "train.early_stopping_metric accuracy: the gate task 't'" in capsys.readouterr().err


def test_accuracy_keeps_a_step_and_reports_the_kept_adapters_accuracy(
        tmp_path: Path, make_recipe: Callable[..., Recipe], write_jsonl: Callable,
        tokenizer: PreTrainedTokenizerBase, capsys: pytest.CaptureFixture[str]) -> None:
    from peft import PeftModel

    recipe = _accuracy_recipe(make_recipe, write_jsonl(tmp_path / "train.jsonl", ROWS),
                              _task_yaml(tmp_path), learning_rate=1e-3)
    assert _cli([str(_spec(tmp_path, recipe))]) == 0
    result = TrainingResult.read(tmp_path / "job" / TRAINING_RESULT)
    assert result.best_step in (2, 4) and result.validation_accuracy is not None
    err = capsys.readouterr().err
    assert f"keeping the adapter of step {result.best_step}, the best by accuracy" in err
    lines = [ProgressLine.model_validate_json(x)
             for x in (tmp_path / "job" / PROGRESS_LOG).read_text().split()]
    accuracies = {p.step: p.accuracy for p in lines if p.stage == "validation"}
    assert set(accuracies) == {2, 4}
    assert accuracies[result.best_step] == result.validation_accuracy
    # The adapter handed on is the one whose accuracy is reported.
    validation = read_examples(recipe.data, tokenizer, recipe.train.max_seq_len,
                               recipe.train.seed).validation
    assert validation is not None
    handed_on = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(
        result.base_model_dir), result.adapter_dir).eval()
    asked = questions(gate_choices(recipe), tokenizer, validation)
    with torch.no_grad():
        share = correct(handed_on, asked, torch.device("cpu")) / len(asked)
    assert result.validation_accuracy == pytest.approx(share)
