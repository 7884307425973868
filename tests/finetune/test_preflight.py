"""The pre-flight report: counts, rendered examples, duplicates and evaluation overlap."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from transformers import PreTrainedTokenizerBase
from typer.testing import CliRunner

from aif.cli import app
from events.recipe import Recipe
from finetune.data import DataValidationError, load_examples
from finetune.preflight import PreflightReport, build_report

ROW = {"text": "Sparks from the pole near the school", "label": "emergency"}
OTHER = {"text": "My bill is twice as high as last month", "label": "accounts"}


def test_counts_and_examples_are_those_training_uses(
    tmp_path: Path, make_recipe: Callable, write_jsonl: Callable, tokenizer: PreTrainedTokenizerBase
) -> None:
    long = {**ROW, "label": "emergency " * 20}
    path = write_jsonl(tmp_path / "t.jsonl", [ROW, OTHER, ROW, long, {"text": "no label"}])
    recipe = make_recipe(path, data={"max_bad_fraction": 0.2})
    report = build_report(recipe, tokenizer)
    train = report.train
    assert report.usable and report.validation is None
    assert (train.rows_read, train.rows_usable, train.bad_rows) == (5, 4, 1)
    assert train.bad_row_reasons == ["line 5: missing column 'label'"]
    trained = load_examples(recipe.data, tokenizer, recipe.train.max_seq_len).train
    lengths = [e.length for e in trained.encoded]
    assert (train.tokens, train.max_tokens) == (sum(lengths), max(lengths))
    assert train.trained_tokens == sum(
        label != -100 for ex in trained.examples for label in ex["labels"])
    assert train.truncated == 1 and max(lengths) > recipe.train.max_seq_len
    assert (train.duplicates, train.duplicate_rows) == (1, ["line 3 = line 1"])
    first = train.examples[0]
    assert first.where == "line 1" and not first.truncated
    assert first.text.startswith("[no loss]")
    assert first.text.endswith(f"Team:[/no loss] emergency{tokenizer.eos_token}")
    assert [e.where for e in train.examples] == ["line 1", "line 2", "line 3"]
    assert PreflightReport.model_validate_json(report.model_dump_json()) == report
    assert "4/5 training rows usable" in report.summary() and "1 duplicates" in report.summary()


def test_too_many_bad_rows_make_the_report_reject_with_the_lines(
    tmp_path: Path, make_recipe: Callable, write_jsonl: Callable, tokenizer: PreTrainedTokenizerBase
) -> None:
    path = write_jsonl(tmp_path / "t.jsonl", [ROW, '{"text": \n', {"text": "x"}])
    report = build_report(make_recipe(path), tokenizer)
    assert not report.usable
    assert "line 2: invalid JSON" in report.reason and "line 3: missing column" in report.reason
    text = report.to_text()
    assert "verdict: REJECTED" in text and "bad line 3: missing column 'label'" in text


def test_validation_split_is_reported_separately(
    tmp_path: Path, make_recipe: Callable, write_jsonl: Callable, tokenizer: PreTrainedTokenizerBase
) -> None:
    rows = [{**ROW, "text": f"ticket number {i} about sparks"} for i in range(10)]
    recipe = make_recipe(write_jsonl(tmp_path / "t.jsonl", rows), data={"validation_split": 0.3})
    report = build_report(recipe, tokenizer)
    assert report.validation is not None
    assert (report.train.rows_usable, report.validation.rows_usable) == (7, 3)
    assert "(validation_split 0.3)" in report.validation.source
    assert "; 3 validation rows" in report.summary()


def test_overlap_with_the_evaluation_data(
    tmp_path: Path, make_recipe: Callable, write_jsonl: Callable, tokenizer: PreTrainedTokenizerBase
) -> None:
    # the evaluation copy differs in case and spacing only; the shared label is too short
    write_jsonl(tmp_path / "test.jsonl", [{"text": "  SPARKS from the pole\tnear the school ",
                                           "label": "accounts"}])
    task = tmp_path / "task.yaml"
    task.write_text(yaml.safe_dump({"task": "t", "dataset_path": "json",
                                    "dataset_kwargs": {"data_files": {"test": "test.jsonl"}}}))
    path = write_jsonl(tmp_path / "t.jsonl", [OTHER, ROW])
    recipe = make_recipe(path)
    recipe = recipe.model_copy(update={"eval": recipe.eval.model_copy(
        update={"tasks": [recipe.eval.tasks[0].model_copy(update={"yaml": str(task)})]})})
    report = build_report(recipe, tokenizer)
    assert (report.train.eval_overlap, report.train.eval_overlap_rows) == (1, ["line 2"])
    assert "overlap with evaluation data: 1 (line 2)" in report.to_text()


def test_chat_examples_show_every_masked_part(
    tmp_path: Path, make_recipe: Callable, write_jsonl: Callable, tokenizer: PreTrainedTokenizerBase
) -> None:
    messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"},
                {"role": "user", "content": "Bye"}, {"role": "assistant", "content": "Ciao"}]
    path = write_jsonl(tmp_path / "t.jsonl", [{"messages": messages}])
    report = build_report(make_recipe(path, data={"format": "chat"},
                                      train={"max_seq_len": 128}), tokenizer)
    text = report.train.examples[0].text
    assert text.count("[no loss]") == 2 and text.count("[/no loss]") == 2
    assert "Hello" in text.split("[/no loss]")[1].split("[no loss]")[0]
    assert "Bye" in text.split("[no loss]")[2]


def test_unreadable_source_raises(
    tmp_path: Path, make_recipe: Callable, tokenizer: PreTrainedTokenizerBase
) -> None:
    with pytest.raises(DataValidationError, match="no such file"):
        build_report(make_recipe(tmp_path / "missing.jsonl"), tokenizer)


def _recipe_file(recipe: Recipe, path: Path) -> Path:
    path.write_text(yaml.safe_dump(recipe.model_dump(mode="json")))
    return path


def test_cli_prints_the_report_and_exits_by_its_verdict(
    tmp_path: Path, make_recipe: Callable[..., Recipe], write_jsonl: Callable,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("AIF_HOME", str(tmp_path / "home"))
    good = write_jsonl(tmp_path / "good.jsonl", [ROW, OTHER])
    recipe = _recipe_file(make_recipe(good), tmp_path / "recipe.yaml")
    runner = CliRunner()
    shown = runner.invoke(app, ["preflight", str(recipe), "--json"])
    assert shown.exit_code == 0, shown.output
    assert json.loads(shown.output)["train"]["rows_usable"] == 2

    bad = write_jsonl(tmp_path / "bad.jsonl", [ROW, {"text": "x"}])
    rejected = runner.invoke(app, ["preflight", str(recipe), "--train-file", str(bad)])
    assert rejected.exit_code == 1
    assert "verdict: REJECTED" in rejected.output and "line 2: missing column" in rejected.output

    missing = runner.invoke(app, ["preflight", str(recipe), "--dataset", "nosuch-org/nosuch"])
    assert missing.exit_code == 2 and "data.dataset 'nosuch-org/nosuch'" in missing.output
