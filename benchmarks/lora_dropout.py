"""What LoRA dropout costs the training loop: the recipe trainer with the recipe's
`lora.dropout` against the same run with dropout 0, in one run.

    .venv/bin/python -m benchmarks.lora_dropout [--recipe grid-ticket-routing] [--steps 4]
        [--rounds 2] [--rows 200]

Both data sets of `benchmarks.train_throughput` (the recipe's own and the generated
variable-length set), packed batches, each run a fresh `python -m finetune.train` process;
within a round the two settings alternate which goes first, so load on a shared machine hits
both alike. The figure is real tokens/s, median over rounds, off against on. It says what
turning dropout off would gain, not whether the models stay as good: that needs the recipes'
own evaluation on their real sets (issue 28), so no default is changed from this alone.
Results go to `benchmarks/results/lora_dropout.json`.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

from benchmarks.machine import write_results
from benchmarks.train_throughput import recipe_trainer, variable_length_set
from events.recipe import Recipe
from finetune.base_model import resolve_base_model
from recipes import load_recipe


def with_dropout(recipe: Recipe, dropout: float) -> Recipe:
    return recipe.model_copy(update={"lora": recipe.lora.model_copy(update={"dropout": dropout})})


def measure(recipe: Recipe, models_dir: Path, steps: int, rounds: int, work: Path) -> dict:
    on = recipe.lora.dropout
    runs: dict[float, list[float]] = {on: [], 0.0: []}
    for r in range(rounds):
        for dropout in (on, 0.0) if r % 2 == 0 else (0.0, on):
            got = recipe_trainer(with_dropout(recipe, dropout), steps, True, models_dir,
                                 work / f"{r}-{dropout}")
            runs[dropout].append(got["tokens_per_s"])
    median = {dropout: statistics.median(got) for dropout, got in runs.items()}
    return {"dropout": on, "steps": steps, "rounds": rounds,
            "tokens_per_s_on": median[on], "tokens_per_s_off": median[0.0],
            "off_vs_on": median[0.0] / median[on], "runs": {str(k): v for k, v in runs.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--recipe", default="grid-ticket-routing")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--rows", type=int, default=200, help="rows of the variable-length set")
    parser.add_argument("--models-dir", type=Path, default=Path(".aif/models"))
    args = parser.parse_args()

    load = os.getloadavg()
    recipe = load_recipe(args.recipe)
    if not recipe.lora.dropout:
        parser.error(f"recipe {args.recipe} trains without LoRA dropout: nothing to compare")
    models_dir = args.models_dir.resolve()
    resolve_base_model(recipe.model.base, models_dir)  # converted once, before the clock
    figures = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, data_recipe in (
            (args.recipe, recipe),
            ("variable-length", variable_length_set(recipe, Path(tmp) / "var.jsonl", args.rows)),
        ):
            (Path(tmp) / name).mkdir()
            figures[name] = got = measure(data_recipe, models_dir, args.steps, args.rounds,
                                          Path(tmp) / name)
            print(f"{name}: dropout {got['dropout']} {got['tokens_per_s_on']:.0f} tokens/s, "
                  f"off {got['tokens_per_s_off']:.0f} tokens/s: {got['off_vs_on']:.2f}x "
                  f"(median of {args.rounds})", flush=True)
    path = write_results("lora_dropout", {"datasets": figures}, load,
                         "python -m benchmarks.lora_dropout " + " ".join(sys.argv[1:]))
    print(f"results in {path}")


if __name__ == "__main__":
    main()
