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
from finetune import preflight
from finetune.data import DataValidationError, load_examples
from finetune.preflight import PreflightReport, build_report
from finetune.rows import SourceNames
from stagefiles.jobspec import PreflightSpec, StageFailure, Throughput
from stagefiles.remote_data import local_copy

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


def _tenant_file(tmp_path: Path, name: str) -> Path:
    """Where the orchestrator hands the stage a file tenant acme named `name`."""
    path = tmp_path / "srv" / "data" / "acme" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def test_a_tenants_files_are_named_as_it_named_them_never_by_the_server_path(
    tmp_path: Path, make_recipe: Callable, write_jsonl: Callable, tokenizer: PreTrainedTokenizerBase
) -> None:
    rows = [ROW, OTHER, {**ROW, "text": "Sparks at Ada's, mail ada@example.org"}, {"text": "x"}]
    train = write_jsonl(_tenant_file(tmp_path, "exports/t.jsonl"), rows)
    validation = write_jsonl(_tenant_file(tmp_path, "v.jsonl"), [OTHER, {"text": "x"}])
    work = tmp_path / "jobs" / "acme" / "job-1"
    work.mkdir(parents=True)
    recipe = make_recipe(train, data={"validation_file": str(validation), "pii": "redact"})
    report = build_report(recipe, tokenizer, work, names=SourceNames("acme"))
    assert not report.usable
    assert report.reason == (
        "exports/t.jsonl (redacted copy): 1 problem(s) in 4 row(s) read:\n"
        "  line 4: missing column 'label'\n"
        "v.jsonl (redacted copy): 1 problem(s) in 2 row(s) read:\n"
        "  line 2: missing column 'label'")
    assert report.train.source == "exports/t.jsonl (redacted copy)"
    assert report.validation is not None
    assert report.validation.source == "v.jsonl (redacted copy)"
    assert report.pii is not None
    assert [c.source for c in report.pii.redacted] == ["exports/t.jsonl", "v.jsonl"]
    assert all(Path(c.path).is_relative_to(work) for c in report.pii.redacted)  # read by training
    described = report.model_copy(update={"pii": None}).model_dump_json()
    assert str(tmp_path) not in described + report.summary()


def _spec(tmp_path: Path, recipe: Recipe, tiny_model_dir: Path) -> Path:
    work = tmp_path / "jobs" / "acme" / "job-1"
    work.mkdir(parents=True, exist_ok=True)
    spec = PreflightSpec(job_id="job-1", tenant="acme", recipe=recipe, work_dir=str(work),
                         model_cache_dir=str(tmp_path / "models"),
                         throughput=Throughput(launcher="local", devices=1,
                                               tokens_per_s={"cpu": 100.0}))
    path = work / "preflight_spec.json"
    spec.write(path)
    return path


def test_a_urls_download_is_named_by_the_url_without_its_credentials(
    tmp_path: Path, make_recipe: Callable, tiny_model_dir: Path
) -> None:
    url = "https://user:pw@data.example.org/exports/t.jsonl?signature=abc"
    spec = PreflightSpec.read(_spec(tmp_path, make_recipe(url), tiny_model_dir))
    names = preflight.source_names(spec)
    copy = local_copy(Path(spec.work_dir), "train_file", url)
    assert names.text(f"{copy}: 1 problem(s)") == (
        "https://data.example.org/exports/t.jsonl: 1 problem(s)")


@pytest.mark.parametrize(("name", "content", "reason"), [
    ("exports/t.parquet", b"PAR1 not really", "exports/t.parquet: 1 problem(s) in 0 row(s) "
     "read:\n  not a readable Parquet file (ArrowInvalid)"),
    ("files/file-0a1b/data.csv", b"text,label\nok,fine\n\xff\n", "file-0a1b: 1 problem(s) in "
     "0 row(s) read:\n  after line 0: not a UTF-8 CSV file (UnicodeDecodeError)"),
    ("t.txt", b"x", "t.txt: 1 problem(s) in 0 row(s) read:\n  unsupported file type '.txt'"),
])
def test_a_file_the_stage_cannot_read_is_named_as_the_tenant_named_it(
    tmp_path: Path, make_recipe: Callable, tiny_model_dir: Path, name: str, content: bytes,
    reason: str, capsys: pytest.CaptureFixture[str],
) -> None:
    path = _tenant_file(tmp_path, name)
    path.write_bytes(content)
    spec_path = _spec(tmp_path, make_recipe(path), tiny_model_dir)
    assert preflight._cli([str(spec_path)]) == preflight.EXIT_UNUSABLE
    failure = StageFailure.find(spec_path)
    assert failure is not None and failure.reason.startswith(reason), failure.reason
    assert str(tmp_path) not in failure.reason + capsys.readouterr().err


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
