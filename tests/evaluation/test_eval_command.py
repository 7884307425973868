"""`aif eval`: an evaluation outside any job, through the installed console command."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.evaluation.conftest import RECIPE

AIF = str(Path(sys.executable).with_name("aif"))


def _aif_eval(*args: str, home: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "AIF_HOME": str(home), "COLUMNS": "200"}
    return subprocess.run([AIF, "eval", *args], capture_output=True, text=True, env=env,
                          timeout=600)


def test_scores_base_and_adapter_and_applies_the_gate(
    tiny_model_dir: Path, random_adapter_dir: Path, tmp_path: Path,
) -> None:
    out = tmp_path / "out"
    done = _aif_eval(str(RECIPE), "--base", str(tiny_model_dir), "--adapter",
                     str(random_adapter_dir), "--limit", "8", "--output", str(out),
                     home=tmp_path / "home")
    assert done.returncode == 0, done.stdout + done.stderr
    (result_file,) = out.glob("evaluation_result.json")
    result = json.loads(result_file.read_text())
    base, tuned = result["base"][0], result["tuned"][0]
    assert base["samples"] == tuned["samples"] == 8
    assert f"{base['value']:.4f}" in done.stdout and f"{tuned['value']:.4f}" in done.stdout
    assert "gate: " in done.stdout
    assert "lm_eval run --model hf" in " ".join(done.stdout.split())


def test_unknown_recipe_names_it(tmp_path: Path) -> None:
    done = _aif_eval("no-such-recipe", home=tmp_path)
    assert done.returncode == 2
    assert "no-such-recipe" in done.stdout


def test_directory_without_adapter_is_refused(tiny_model_dir: Path, tmp_path: Path) -> None:
    done = _aif_eval(str(RECIPE), "--base", str(tiny_model_dir), "--adapter", str(tmp_path),
                     home=tmp_path)
    assert done.returncode == 2
    assert "no adapter_config.json" in done.stdout
