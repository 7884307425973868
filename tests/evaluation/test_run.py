from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from aif.launchers import StageCommand
from evaluation import run as run_module
from evaluation.harness import (
    AdapterNotAppliedError,
    check_adapter_applied,
    cli_command,
    evaluate_model,
    extract_metrics,
)
from stagefiles.jobspec import (
    EVAL_COMMANDS,
    EVALUATION_RESULT,
    PROGRESS_LOG,
    EvaluationResult,
    ProgressLine,
)
from tests.evaluation.conftest import SpecFactory

TASK = "grid_ticket_routing"
GUARD = "general_knowledge_guard"


@pytest.fixture(scope="module")
def evaluated(
    make_spec: SpecFactory, random_adapter_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """One full worker run (base + tuned) shared by the tests that read its files."""
    out = tmp_path_factory.mktemp("evaluation")
    spec_path = out / "evaluation_spec.json"
    make_spec(out, random_adapter_dir).write(spec_path)
    assert run_module.main([str(spec_path)]) == 0
    return out


def test_result_holds_every_metric(evaluated: Path) -> None:
    result = EvaluationResult.read(evaluated / EVALUATION_RESULT)
    for metrics in (result.base, result.tuned):
        assert sorted((m.task, m.metric, m.num_fewshot, m.samples) for m in metrics) == [
            (GUARD, "acc", 0, 10), (TASK, "acc", 0, 10)
        ]
        for m in metrics:
            assert 0.0 <= m.value <= 1.0
            assert m.stderr is not None and m.stderr > 0.0
    assert result.lm_eval_version == "0.4.13"
    assert sorted(result.task_config_sha256) == [GUARD, TASK]
    for name, metrics in (("lm_eval_base.json", result.base), ("lm_eval_tuned.json", result.tuned)):
        # lm-eval's own results hold no class figures nor per-document outcomes;
        # evaluation.baselines adds them.
        assert extract_metrics(json.loads((evaluated / name).read_text())) == [
            m.model_copy(update={"classes": None, "per_doc": None}) for m in metrics]
        for m in metrics:  # from the 10 documents each model answered
            assert m.per_doc is not None and sorted(m.per_doc.right + m.per_doc.wrong) == [
                *range(10)]
            assert len(m.per_doc.right) / 10 == pytest.approx(m.value)
            assert m.classes is not None and m.classes.documents == 10
            assert m.classes.majority_per_doc is not None
            assert sum(m.classes.predicted.values()) == 10
            assert 0.0 <= m.classes.macro_f1 <= 1.0 and 0.0 < m.classes.chance < 1.0
    lines = (evaluated / PROGRESS_LOG).read_text().splitlines()
    assert [ProgressLine.model_validate_json(line).step for line in lines] == [1, 2]
    assert {ProgressLine.model_validate_json(line).total_steps for line in lines} == {2}


def test_the_stage_writes_down_the_equivalent_command_lines(
    evaluated: Path, make_spec: SpecFactory, random_adapter_dir: Path
) -> None:
    """The pages show them (the service shell cannot import `cli_command`)."""
    spec = make_spec(evaluated, random_adapter_dir)
    assert json.loads((evaluated / EVAL_COMMANDS).read_text()) == {
        "base": cli_command(spec, None, evaluated),
        "tuned": cli_command(spec, str(random_adapter_dir), evaluated)}


@pytest.mark.parametrize("model", ["base", "tuned"])
def test_cli_reproduces_stored_scores(
    evaluated: Path, make_spec: SpecFactory, random_adapter_dir: Path, tmp_path: Path, model: str
) -> None:
    adapter_dir = str(random_adapter_dir) if model == "tuned" else None
    command = cli_command(make_spec(evaluated, random_adapter_dir), adapter_dir, tmp_path)
    env = os.environ | {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    subprocess.run(command, check=True, env=env, capture_output=True, timeout=300)

    (results_file,) = tmp_path.rglob("results_*.json")
    from_cli = extract_metrics(json.loads(results_file.read_text()))
    stored = getattr(EvaluationResult.read(evaluated / EVALUATION_RESULT), model)
    assert from_cli == [m.model_copy(update={"classes": None, "per_doc": None}) for m in stored]


def test_stored_results_render_as_lm_eval_table(evaluated: Path) -> None:
    from lm_eval.utils import make_table

    assert TASK in make_table(json.loads((evaluated / "lm_eval_tuned.json").read_text()))


def test_probe_sees_random_adapter(tiny_model_dir: Path, random_adapter_dir: Path) -> None:
    assert check_adapter_applied(str(tiny_model_dir), str(random_adapter_dir)) > 1e-6


def test_probe_rejects_zero_adapter(tiny_model_dir: Path, zero_adapter_dir: Path) -> None:
    with pytest.raises(AdapterNotAppliedError, match="ADAPTER NOT APPLIED") as refused:
        check_adapter_applied(str(tiny_model_dir), str(zero_adapter_dir))
    assert str(zero_adapter_dir) not in str(refused.value)  # the job's reason: no server path
    assert str(tiny_model_dir) not in str(refused.value)


def test_zero_adapter_is_never_scored(
    make_spec: SpecFactory, zero_adapter_dir: Path, tmp_path: Path
) -> None:
    with pytest.raises(AdapterNotAppliedError):
        evaluate_model(make_spec(tmp_path, zero_adapter_dir), str(zero_adapter_dir))
    assert not (tmp_path / "lm_eval_tuned.json").exists()


def test_worker_fails_loudly_on_ignored_adapter(
    make_spec: SpecFactory, zero_adapter_dir: Path, tmp_path: Path, capsys
) -> None:
    spec_path = tmp_path / "evaluation_spec.json"
    make_spec(tmp_path, zero_adapter_dir).write(spec_path)
    assert run_module.main([str(spec_path)]) == 1
    err = capsys.readouterr().err
    assert "evaluation failed: AdapterNotAppliedError: ADAPTER NOT APPLIED" in err
    assert not (tmp_path / EVALUATION_RESULT).exists()


def test_per_sample_log_when_the_recipe_asks(make_spec: SpecFactory, tmp_path: Path) -> None:
    spec = make_spec(tmp_path, None)
    eval_section = spec.recipe.eval.model_copy(update={"log_samples": True, "limit": 3})
    spec = spec.model_copy(update={"recipe": spec.recipe.model_copy(update={"eval": eval_section})})
    metrics, _ = evaluate_model(spec, None)
    rows = [json.loads(line) for line in (tmp_path / "samples_base.jsonl").read_text().split("\n")
            if line]
    assert sorted({r["task"] for r in rows}) == [GUARD, TASK]
    assert len(rows) == 6 and all("doc" in r and "target" in r for r in rows)
    assert "samples" not in json.loads((tmp_path / "lm_eval_base.json").read_text())
    assert {m.samples for m in metrics} == {3}
    assert cli_command(spec, None, tmp_path / "cli")[-1] == "--log_samples"


def test_under_accelerate_launch_only_rank_0_reports_the_same_scores(
    evaluated: Path, make_spec: SpecFactory, random_adapter_dir: Path, tmp_path: Path,
) -> None:
    spec_path = tmp_path / "evaluation_spec.json"
    make_spec(tmp_path, random_adapter_dir).write(spec_path)
    argv = StageCommand("evaluation.run", spec_path, num_processes=2).argv()
    env = os.environ | {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    two = EvaluationResult.read(tmp_path / EVALUATION_RESULT)
    one = EvaluationResult.read(evaluated / EVALUATION_RESULT)
    assert (two.base, two.tuned) == (one.base, one.tuned)
    assert len((tmp_path / PROGRESS_LOG).read_text().splitlines()) == 2  # rank 0 only
