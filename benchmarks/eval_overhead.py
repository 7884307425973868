"""Evaluation stage wall time against the `lm_eval` command line, same model, task, settings.

    .venv/bin/python -m benchmarks.eval_overhead [--recipe grid-ticket-routing]
        [--adapter DIR] [--limit N] [--rounds 1]

The stage (`python -m evaluation.run`, as a job runs it: the adapter probe, then base and,
with --adapter, base + adapter) is timed against the `lm_eval` command line run once per model
(`evaluation.runner.cli_command`), each as a fresh process, rounds interleaved so that load
on a shared machine hits both alike. Target (issue 5): stage <= 1.1x the command line.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from evaluation.runner import cli_command
from events.jobspec import EvaluationSpec
from finetune.base_model import resolve_base_model
from recipes import load_recipe


def _timed(argv: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--recipe", default="grid-ticket-routing")
    parser.add_argument("--adapter", type=Path, help="LoRA adapter; without it, base only")
    parser.add_argument("--limit", type=int, help="documents per task (default: all)")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--models-dir", type=Path, default=Path(".aif/models"))
    args = parser.parse_args()

    recipe = load_recipe(args.recipe)
    if args.limit:
        recipe = recipe.model_copy(update={"eval": recipe.eval.model_copy(
            update={"limit": args.limit})})
    base = resolve_base_model(recipe.model.base, args.models_dir.resolve())
    adapter = str(args.adapter.resolve()) if args.adapter else None
    stage_s, cli_s = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            out = Path(tmp) / f"round{r}"
            spec = EvaluationSpec(job_id="bench", base_model_dir=str(base), adapter_dir=adapter,
                                  recipe=recipe, output_dir=str(out / "stage"))
            spec_path = out / "evaluation_spec.json"
            out.mkdir(parents=True)
            spec.write(spec_path)
            cli_s.append(sum(_timed(cli_command(spec, a, out / f"cli{i}"))
                             for i, a in enumerate([None, adapter] if adapter else [None])))
            stage_s.append(_timed([sys.executable, "-m", "evaluation.run", str(spec_path)]))
            print(f"round {r + 1}: lm_eval CLI {cli_s[-1]:.1f}s, stage {stage_s[-1]:.1f}s",
                  flush=True)
    cli, stage = statistics.median(cli_s), statistics.median(stage_s)
    models = "base + adapter" if adapter else "base"
    tasks = ", ".join(t.name for t in recipe.eval.tasks)
    print(f"{models} on {tasks} (limit {recipe.eval.limit or 'none'}), median of {args.rounds}:")
    print(f"  lm_eval command line  {cli:8.1f} s")
    print(f"  evaluation stage      {stage:8.1f} s   ratio {stage / cli:.3f} (target <= 1.1)")


if __name__ == "__main__":
    main()
