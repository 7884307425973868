"""Evaluation wall time per job against the `lm_eval` command line, same model, tasks, settings.

    .venv/bin/python -m benchmarks.eval_overhead [--recipe grid-ticket-routing]
        [--adapter DIR] [--limit 50] [--rounds 1]

A job's evaluation stage (`python -m evaluation.run`, as a job runs it: the adapter probe,
then base and tuned) runs with a warm base-score cache, so it scores only the tuned model;
it is timed against the `lm_eval` command line run on base and on tuned
(`evaluation.harness.cli_command`), each a fresh process, rounds interleaved so that load on
a shared machine hits both alike. The cache is warmed once before (untimed), as the first
job on a base model does. Without --adapter a random LoRA adapter (r 16, all linear layers)
is made. Every stored score must equal the command line's. Target (issue 16): <= 0.55x.
Results go to `benchmarks/results/eval_overhead.json`.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.machine import write_results
from evaluation.harness import cli_command
from finetune.base_model import resolve_base_model
from recipes import load_recipe
from stagefiles.jobspec import EVALUATION_RESULT, BaseScoreCache, EvaluationResult, EvaluationSpec


def _timed(argv: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - started


def random_adapter(base: Path, out: Path) -> Path:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    config = LoraConfig(r=16, lora_alpha=32, target_modules="all-linear",
                        init_lora_weights=False)  # random A and B: it changes outputs
    get_peft_model(model, config).save_pretrained(out)
    return out


def _cli_scores(output_path: Path) -> dict[tuple[str, str], float]:
    (results,) = output_path.rglob("results_*.json")
    raw = json.loads(results.read_text())["results"]
    return {(task, key.split(",")[0]): value for task, values in raw.items()
            for key, value in values.items() if key.endswith(",none") and "_stderr" not in key}


def _stage(spec: EvaluationSpec, out: Path) -> tuple[float, EvaluationResult]:
    out.mkdir(parents=True)
    spec = spec.model_copy(update={"output_dir": str(out / "stage")})
    spec.write(out / "evaluation_spec.json")
    wall = _timed([sys.executable, "-m", "evaluation.run", str(out / "evaluation_spec.json")])
    return wall, EvaluationResult.read(out / "stage" / EVALUATION_RESULT)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--recipe", default="grid-ticket-routing")
    parser.add_argument("--adapter", type=Path, help="LoRA adapter; default: a random one")
    parser.add_argument("--limit", type=int, default=50, help="documents per task (0: all)")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--models-dir", type=Path, default=Path(".aif/models"))
    args = parser.parse_args()

    load = os.getloadavg()
    recipe = load_recipe(args.recipe)
    if args.limit:
        recipe = recipe.model_copy(update={"eval": recipe.eval.model_copy(
            update={"limit": args.limit})})
    base = resolve_base_model(recipe.model.base, args.models_dir.resolve())
    stage_s, cli_s, identical = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        adapter = str(args.adapter.resolve() if args.adapter else
                      random_adapter(base, Path(tmp) / "adapter"))
        cache = BaseScoreCache(shared_dir=str(Path(tmp) / "base_scores"),
                               shared_tasks=[t.name for t in recipe.eval.tasks])
        spec = EvaluationSpec(job_id="bench", base_model_dir=str(base), adapter_dir=adapter,
                              recipe=recipe, output_dir=tmp, base_cache=cache)
        _stage(spec, Path(tmp) / "warm-up")  # the first job on this base model
        for r in range(args.rounds):
            out = Path(tmp) / f"round{r}"
            wall, result = _stage(spec, out)
            stage_s.append(wall)
            cli_scores: dict[tuple[str, str], float] = {}
            cli_s.append(0.0)
            for name, a in (("base", None), ("tuned", adapter)):
                command = cli_command(spec, a, out / f"cli-{name}")
                cli_s[-1] += _timed(command)
                cli_scores |= {(name, *k): v for k, v in _cli_scores(out / f"cli-{name}").items()}
            stored = {(name, m.task, m.metric): m.value
                      for name, got in (("base", result.base), ("tuned", result.tuned))
                      for m in got}
            identical.append(stored == cli_scores and len(result.base_from_cache) > 0)
            print(f"round {r + 1}: lm_eval CLI base + tuned {cli_s[-1]:.1f}s, stage with warm "
                  f"base cache {stage_s[-1]:.1f}s, scores identical: {identical[-1]}",
                  flush=True)
    cli, stage = statistics.median(cli_s), statistics.median(stage_s)
    tasks = ", ".join(t.name for t in recipe.eval.tasks)
    print(f"base + tuned on {tasks} (limit {recipe.eval.limit or 'none'}), median of "
          f"{args.rounds}:")
    print(f"  lm_eval command line, base and tuned  {cli:8.1f} s")
    print(f"  stage, warm base cache                {stage:8.1f} s   ratio {stage / cli:.3f} "
          "(target <= 0.55)")
    path = write_results("eval_overhead", {
        "recipe": args.recipe, "tasks": tasks, "limit": recipe.eval.limit,
        "rounds": args.rounds, "cli_base_and_tuned_s": cli, "stage_warm_cache_s": stage,
        "ratio": stage / cli, "scores_identical": all(identical),
        "adapter": "given" if args.adapter else "random LoRA r16 all-linear",
    }, load, "python -m benchmarks.eval_overhead " + " ".join(sys.argv[1:]))
    print(f"results in {path}")


if __name__ == "__main__":
    main()
