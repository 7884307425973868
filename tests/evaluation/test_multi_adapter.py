"""Several adapters of one base, one base load: each adapter's scores equal a separate run's,
and each adapter is probed (a zero adapter among them is refused)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from evaluation import run as run_module
from evaluation.harness import AdapterNotAppliedError, evaluate_model
from stagefiles.jobspec import (
    EVAL_COMMANDS,
    EVALUATION_FAILURE,
    EVALUATION_RESULT,
    EvaluationResult,
    EvaluationSpec,
    StageFailure,
)
from tests.evaluation.conftest import SpecFactory


def test_each_adapter_scores_as_in_a_separate_run(
    make_spec: SpecFactory, random_adapter_dir: Path, other_adapter_dir: Path, tmp_path: Path
) -> None:
    spec = make_spec(tmp_path / "together", random_adapter_dir).model_copy(
        update={"more_adapter_dirs": [str(other_adapter_dir)]})
    together = run_module.run(spec)
    separate = [evaluate_model(make_spec(tmp_path / f"alone-{i}", a), str(a))[0]
                for i, a in enumerate((random_adapter_dir, other_adapter_dir))]
    assert together.tuned == separate[0] and together.more_tuned == [separate[1]]
    assert together.tuned != together.more_tuned[0]  # the switch really switched
    assert together.tuned != together.base
    commands = json.loads((tmp_path / "together" / EVAL_COMMANDS).read_text())
    assert list(commands) == ["base", "tuned", "tuned-2"]
    assert f"peft={other_adapter_dir}" in " ".join(commands["tuned-2"])
    assert (tmp_path / "together" / "lm_eval_tuned-2.json").is_file()


def test_a_zero_adapter_among_several_is_refused(
    make_spec: SpecFactory, random_adapter_dir: Path, zero_adapter_dir: Path, tmp_path: Path
) -> None:
    spec = make_spec(tmp_path, random_adapter_dir).model_copy(
        update={"more_adapter_dirs": [str(zero_adapter_dir)]})
    with pytest.raises(AdapterNotAppliedError, match="adapter 2 of 2 changes no logit") as no:
        run_module.run(spec)
    assert str(zero_adapter_dir) not in str(no.value)  # a job's reason: no server path


def test_adapters_kept_apart_each_get_the_folder_of_a_run_alone(
    make_spec: SpecFactory, random_adapter_dir: Path, other_adapter_dir: Path,
    zero_adapter_dir: Path, tmp_path: Path
) -> None:
    """The orchestrator's batches: each adapter's result, files and commands in its own
    folder, named as a one-adapter run names them; a zero adapter fails alone."""
    alone = run_module.run(make_spec(tmp_path / "alone", other_adapter_dir))
    first, second, zero = tmp_path / "first", tmp_path / "second", tmp_path / "zero"
    (second / EVALUATION_FAILURE).parent.mkdir()
    (second / EVALUATION_FAILURE).write_text("stale")  # an earlier run's is not this run's
    spec = make_spec(first, random_adapter_dir).model_copy(update={
        "more_adapter_dirs": [str(other_adapter_dir), str(zero_adapter_dir)],
        "more_output_dirs": [str(second), str(zero)]})
    together = run_module.run(spec)
    kept = EvaluationResult.read(second / EVALUATION_RESULT)
    assert kept.tuned == alone.tuned == together.more_tuned[0] and kept.base == alone.base
    assert kept.more_tuned == [] and together.more_tuned[1] == []
    assert EvaluationResult.read(first / EVALUATION_RESULT).tuned == together.tuned
    assert not (second / EVALUATION_FAILURE).exists()
    for folder in (first, second):
        assert {p.name for p in folder.glob("lm_eval_*.json")} == {
            "lm_eval_base.json", "lm_eval_tuned.json", EVAL_COMMANDS}
        assert (folder / "progress.jsonl").read_text().count("\n") == 2
    assert f"peft={other_adapter_dir}" in " ".join(
        json.loads((second / EVAL_COMMANDS).read_text())["tuned"])
    failure = StageFailure.read(zero / EVALUATION_FAILURE)
    assert failure.kind == "final" and "AdapterNotAppliedError" in failure.reason
    assert "the job's adapter changes no logit" in failure.reason  # its own job's reason,
    assert str(zero_adapter_dir) not in failure.reason  # with no server path
    assert not (zero / EVALUATION_RESULT).exists()


def test_one_folder_per_further_adapter_is_required(
    make_spec: SpecFactory, random_adapter_dir: Path, tmp_path: Path
) -> None:
    with pytest.raises(ValueError, match="more_output_dirs: one folder per entry"):
        EvaluationSpec.model_validate({**make_spec(tmp_path, random_adapter_dir).model_dump(),
                                       "more_output_dirs": [str(tmp_path / "x")]})
