"""Several adapters of one base, one base load: each adapter's scores equal a separate run's,
and each adapter is probed (a zero adapter among them is refused)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from evaluation import run as run_module
from evaluation.runner import AdapterNotAppliedError, evaluate_model
from events.jobspec import EVAL_COMMANDS
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
    with pytest.raises(AdapterNotAppliedError, match=str(zero_adapter_dir)):
        run_module.run(spec)
