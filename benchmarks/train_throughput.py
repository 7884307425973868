"""Training throughput: the recipe trainer against the HF Trainer + PEFT script a user would
write instead, same model, data, LoRA, batch size, steps and machine, in one run.

    .venv/bin/python -m benchmarks.train_throughput [--recipe grid-ticket-routing]
        [--steps 30] [--rounds 1] [--train-file F]

Each variant is a fresh process, rounds interleaved so that load on a shared machine hits all
alike: the plain script padding every row to max_seq_len (the transformers tutorials' way) and
padding each batch to its longest row, and the recipe trainer with padded and with packed
(padding-free) batches. Figures are real (non-padding) tokens per second of the training
loop and peak memory (GPU allocated, or resident set on CPUs). Target (issue 4): packed >= 1.5x
the plain script's tokens/s with no higher peak memory.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from events.jobspec import TRAINING_RESULT, TrainingResult, TrainingSpec
from events.recipe import Recipe
from finetune.base_model import resolve_base_model
from recipes import load_recipe

BASELINES = ("max_length", "longest")


def _plain_script(recipe: Recipe, model_dir: Path, steps: int, padding: str) -> dict:
    data, train, lora = recipe.data, recipe.train, recipe.lora
    argv = [
        sys.executable, "-m", "benchmarks.hf_trainer_baseline",
        "--model", str(model_dir), "--data", data.train_file,
        "--prompt-template", data.prompt_template or "",
        "--completion-template", data.completion_template or "",
        "--padding", padding, "--steps", str(steps),
        "--batch-size", str(train.batch_size), "--max-len", str(train.max_seq_len),
        "--lr", str(train.learning_rate), "--lora-r", str(lora.r),
        "--lora-alpha", str(lora.alpha),
    ]  # fmt: skip
    done = subprocess.run(argv, check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def recipe_trainer(recipe: Recipe, steps: int, packing: bool, models_dir: Path,
                   work: Path) -> dict:
    """One `python -m finetune.train` run of `steps` steps; its figures from TrainingResult."""
    train = recipe.train.model_copy(update={
        "max_steps": steps, "packing": packing, "checkpoint_steps": None, "logging_steps": steps,
    })
    spec = TrainingSpec(job_id="bench", tenant="bench",
                        recipe=recipe.model_copy(update={"train": train}),
                        work_dir=str(work), model_cache_dir=str(models_dir))
    spec_path = work.with_suffix(".json")
    spec.write(spec_path)
    subprocess.run([sys.executable, "-m", "finetune.train", str(spec_path)], check=True,
                   capture_output=True, text=True)
    result = TrainingResult.read(work / TRAINING_RESULT)
    return {"tokens_per_s": result.tokens_per_s, "real_tokens": result.train_tokens,
            "peak_memory_mb": result.peak_memory_mb}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--recipe", default="grid-ticket-routing")
    parser.add_argument("--train-file", help="other data with the recipe's columns")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--models-dir", type=Path, default=Path(".aif/models"))
    args = parser.parse_args()

    recipe = load_recipe(args.recipe)
    if args.train_file:
        data = recipe.data.model_copy(update={"train_file": str(Path(args.train_file).resolve())})
        recipe = recipe.model_copy(update={"data": data})
    if recipe.data.format != "prompt_completion":
        parser.error("the plain script renders prompt/completion templates; pick such a recipe")
    models_dir = args.models_dir.resolve()
    model_dir = resolve_base_model(recipe.model.base, models_dir)
    runs: dict[str, list[dict]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for padding in BASELINES:
                runs.setdefault(f"HF Trainer, pad to {padding}", []).append(
                    _plain_script(recipe, model_dir, args.steps, padding))
            for packing in (False, True):
                name = "recipe trainer, " + ("packed" if packing else "pad to longest")
                runs.setdefault(name, []).append(recipe_trainer(
                    recipe, args.steps, packing, models_dir, Path(tmp) / f"{r}-{packing}"))
    median = {name: {key: statistics.median(run[key] for run in got) for key in got[0]}
              for name, got in runs.items()}
    packed = median["recipe trainer, packed"]
    print(f"{args.recipe}: {args.steps} steps x batch {recipe.train.batch_size}, "
          f"max_seq_len {recipe.train.max_seq_len}, {args.rounds} round(s), median")
    print(f"{'variant':34} {'real tokens/s':>14} {'peak MiB':>9} {'packed is':>10}")
    for name, m in median.items():
        print(f"{name:34} {m['tokens_per_s']:14.0f} {m['peak_memory_mb']:9.0f} "
              f"{packed['tokens_per_s'] / m['tokens_per_s']:9.2f}x")


if __name__ == "__main__":
    main()
