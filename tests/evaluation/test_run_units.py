"""The evaluation stage's logic that needs no model (`evaluation/run.py`, `harness.py`): metric
extraction, CLI flags, exit paths."""

from __future__ import annotations

from pathlib import Path

import lm_eval
import pytest

from evaluation import run as run_module
from evaluation.harness import cli_command, evaluate_model, extract_metrics
from events.recipe_eval import EvalTask
from stagefiles.jobspec import (
    EVALUATION_RESULT,
    PROGRESS_LOG,
    EvaluationResult,
    FailureKind,
    StageFailure,
    TaskMetric,
)
from tests.evaluation.conftest import SpecFactory


def test_extract_metrics_filters_stderr_and_groups() -> None:
    raw = {
        "results": {
            "grp": {"alias": "grp", "acc,none": 0.5, "acc_stderr,none": 0.1},
            "gen": {
                "alias": " - gen",
                "exact_match,strict-match": 0.25,
                "exact_match_stderr,strict-match": "N/A",
            },
            "mc": {"alias": " - mc", "acc,none": 1, "acc_stderr,none": 0.0},
        },
        "group_subtasks": {"grp": ["gen", "mc"]},
        "n-shot": {"gen": 5, "mc": 5},
        "n-samples": {
            "gen": {"original": 9, "effective": 4},
            "mc": {"original": 6, "effective": 6},
        },
    }
    assert extract_metrics(raw) == [
        TaskMetric(task="grp", metric="acc", value=0.5, stderr=0.1, num_fewshot=0, samples=10),
        TaskMetric(
            task="gen", metric="exact_match,strict-match", value=0.25, stderr=None,
            num_fewshot=5, samples=4,
        ),
        TaskMetric(task="mc", metric="acc", value=1.0, stderr=0.0, num_fewshot=5, samples=6),
    ]  # fmt: skip


def test_cli_command_flags(make_spec: SpecFactory, tmp_path: Path) -> None:
    spec = make_spec(tmp_path, None)
    command = cli_command(spec, "/adapters/a", tmp_path / "cli")
    assert command[1:] == [
        "run",
        "--model", "hf",
        "--model_args", f"pretrained={spec.base_model_dir},peft=/adapters/a,dtype=float32",
        "--tasks", "grid_ticket_routing,general_knowledge_guard",
        "--num_fewshot", "0",
        "--batch_size", "8",
        "--device", "cpu",
        "--seed", "1234,1234,1234,1234",
        "--output_path", str(tmp_path / "cli"),
        "--include_path", str(tmp_path / "cli" / "tasks"),
        "--limit", "10",
    ]  # fmt: skip
    for task in ("grid_ticket_routing", "general_knowledge_guard"):
        assert (tmp_path / "cli" / "tasks" / f"{task}.yaml").is_file()


def test_cli_command_builtin_task_with_chat_template(
    make_spec: SpecFactory, tmp_path: Path
) -> None:
    spec = make_spec(tmp_path, None)
    eval_section = spec.recipe.eval.model_copy(
        update={"tasks": [EvalTask(name="hellaswag")], "limit": None, "apply_chat_template": True}
    )
    recipe = spec.recipe.model_copy(update={"eval": eval_section})
    command = cli_command(spec.model_copy(update={"recipe": recipe}), None, tmp_path)
    assert command[-1] == "--apply_chat_template"
    assert "--include_path" not in command and "--limit" not in command
    assert f"pretrained={spec.base_model_dir},dtype=float32" in command


def test_non_main_rank_gets_no_results(
    make_spec: SpecFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(lm_eval, "simple_evaluate", lambda **_: None)
    assert evaluate_model(make_spec(tmp_path, None), None) == ([], {})
    assert not (tmp_path / "lm_eval_base.json").exists()


METRIC = TaskMetric(task="t", metric="acc", value=0.5, stderr=0.1, num_fewshot=0, samples=3)


@pytest.fixture
def fake_scores(monkeypatch: pytest.MonkeyPatch) -> list[str | None]:
    calls: list[str | None] = []

    def fake(spec: object, adapter_dir: str | None, tasks: object) -> tuple[list, dict]:
        calls.append(adapter_dir)
        return [METRIC], {}

    monkeypatch.setattr(run_module, "evaluate_model", fake)
    return calls


def test_base_only_spec(make_spec: SpecFactory, tmp_path: Path, fake_scores: list) -> None:
    spec_path = tmp_path / "spec.json"
    make_spec(tmp_path, None).write(spec_path)
    assert run_module.main([str(spec_path)]) == 0
    result = EvaluationResult.read(tmp_path / EVALUATION_RESULT)
    assert (result.base, result.tuned, fake_scores) == ([METRIC], [], [None])
    assert list(result.task_config_sha256) == ["grid_ticket_routing", "general_knowledge_guard"]
    assert '"total_steps":1' in (tmp_path / PROGRESS_LOG).read_text()


def test_non_main_rank_writes_nothing(
    make_spec: SpecFactory, tmp_path: Path, fake_scores: list, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RANK", "1")
    assert run_module.run(make_spec(tmp_path, tmp_path / "adapter")) is None
    assert fake_scores == [None, str(tmp_path / "adapter")]
    assert not (tmp_path / EVALUATION_RESULT).exists()
    assert not (tmp_path / PROGRESS_LOG).exists()


def test_missing_spec_exits_non_zero(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    spec_path = tmp_path / "absent.json"
    assert run_module.main([str(spec_path)]) == 1
    assert "evaluation failed: FileNotFoundError" in capsys.readouterr().err
    assert StageFailure.find(spec_path).kind is FailureKind.retryable  # ours, not the request's


def test_invalid_spec_exits_non_zero(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "spec.json").write_text('{"job_id": "j"}')
    assert run_module.main([str(tmp_path / "spec.json")]) == 1
    assert "evaluation failed: ValidationError" in capsys.readouterr().err
    assert StageFailure.find(tmp_path / "spec.json") == StageFailure(
        kind=FailureKind.final, reason="evaluation failed: ValidationError")


@pytest.mark.parametrize(("extra", "defaults"), [([], False), ([EvalTask(name="hellaswag")], True)])
def test_builtin_index_only_when_needed(
    make_spec: SpecFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, extra, defaults
) -> None:
    seen: dict = {}
    monkeypatch.setattr("lm_eval.tasks.TaskManager", lambda **kwargs: seen.update(kwargs))
    monkeypatch.setattr(lm_eval, "simple_evaluate", lambda **_: None)
    spec = make_spec(tmp_path, None)
    eval_section = spec.recipe.eval.model_copy(update={"tasks": [*spec.recipe.eval.tasks, *extra]})
    recipe = spec.recipe.model_copy(update={"eval": eval_section})
    evaluate_model(spec.model_copy(update={"recipe": recipe}), None)
    assert seen["include_defaults"] is defaults
    assert seen["include_path"] == str(tmp_path / "tasks")
