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
    said = " ".join(done.stdout.split())
    assert "lm_eval run --model hf" in said
    # the pre-flight's evidence planning on the same 8 documents: too few for the paired test
    assert ("evidence: 8 documents of grid_ticket_routing (the commonest answer 37.5% of "
            "them): the paired test at alpha 0.05") in said


def test_unknown_recipe_names_it(tmp_path: Path) -> None:
    done = _aif_eval("no-such-recipe", home=tmp_path)
    assert done.returncode == 2
    assert "no-such-recipe" in done.stdout


def test_directory_without_adapter_is_refused(tiny_model_dir: Path, tmp_path: Path) -> None:
    done = _aif_eval(str(RECIPE), "--base", str(tiny_model_dir), "--adapter", str(tmp_path),
                     home=tmp_path)
    assert done.returncode == 2
    assert "no adapter_config.json" in done.stdout


def test_several_adapters_reuse_the_cached_base_scores_unless_told_not_to(
    tiny_model_dir: Path, random_adapter_dir: Path, other_adapter_dir: Path, tmp_path: Path,
) -> None:
    common = (str(RECIPE), "--base", str(tiny_model_dir), "--limit", "4")
    first = _aif_eval(*common, "--adapter", str(random_adapter_dir), "--output",
                      str(tmp_path / "one"), home=tmp_path / "home")
    assert first.returncode == 0, first.stdout + first.stderr
    assert "from the cache" not in first.stdout
    both = _aif_eval(*common, "--adapter", str(random_adapter_dir), "--adapter",
                     str(other_adapter_dir), "--output", str(tmp_path / "two"),
                     home=tmp_path / "home")
    assert both.returncode == 0, both.stdout + both.stderr
    assert "from the cache (--no-cache scores them again)" in " ".join(both.stdout.split())
    assert both.stdout.count("gate (") == 2
    one = json.loads((tmp_path / "one" / "evaluation_result.json").read_text())
    two = json.loads((tmp_path / "two" / "evaluation_result.json").read_text())
    assert two["base"] == one["base"] and two["tuned"] == one["tuned"]
    assert len(two["more_tuned"]) == 1 and two["more_tuned"][0] != two["tuned"]
    again = _aif_eval(*common, "--no-cache", "--output", str(tmp_path / "three"),
                      home=tmp_path / "home")
    assert again.returncode == 0, again.stdout + again.stderr
    assert "from the cache" not in again.stdout
    three = json.loads((tmp_path / "three" / "evaluation_result.json").read_text())
    assert three["base"] == one["base"] and three["base_from_cache"] == []


def test_own_evaluation_rows_become_the_gate_task(
    tiny_model_dir: Path, random_adapter_dir: Path, tmp_path: Path,
) -> None:
    """A CSV in the training columns, scored with the recipe's template under `<task>_own`;
    the recipe's own test set is still reported."""
    rows = [json.loads(line) for line in
            (RECIPE.parent / "data/test.jsonl").read_text().splitlines()[:6]]
    own = tmp_path / "own.csv"
    own.write_text("text,label\n" + "".join(f"\"{r['text']}\",{r['label']}\n" for r in rows))
    out = tmp_path / "out"
    done = _aif_eval(str(RECIPE), "--base", str(tiny_model_dir), "--adapter",
                     str(random_adapter_dir), "--eval-file", str(own), "--limit", "8",
                     "--output", str(out), home=tmp_path / "home")
    assert done.returncode == 0, done.stdout + done.stderr
    result = json.loads((out / "evaluation_result.json").read_text())
    samples = {m["task"]: m["samples"] for m in result["tuned"]}
    assert samples == {"grid_ticket_routing_own": 6, "grid_ticket_routing": 8,
                       "general_knowledge_guard": 8}
    own_acc = next(m for m in result["tuned"] if m["task"] == "grid_ticket_routing_own")
    assert own_acc["classes"]["documents"] == 6
    assert "gate: " in done.stdout and "acc on grid_ticket_routing_own:" in " ".join(
        done.stdout.split())


def test_a_missing_evaluation_file_is_named(tiny_model_dir: Path, tmp_path: Path) -> None:
    done = _aif_eval(str(RECIPE), "--base", str(tiny_model_dir), "--eval-file",
                     str(tmp_path / "nope.jsonl"), home=tmp_path)
    assert done.returncode != 0
    assert "data.eval_file: no" in " ".join(done.stdout.split())
