"""Preference tuning's training loop against SFT's on the same rows, in one run (issue 26).

    .venv/bin/python -m benchmarks.preference_throughput [--recipe citizen-reply-de-dpo]
        [--steps 6] [--rounds 2] [--padded]

Three variants of the recipe, each a fresh `python -m finetune.train` process, rounds
interleaved so that load on a shared machine hits all alike: SFT on each pair's prompt and
chosen answer (the same tokens as DPO's chosen sequence), DPO (the reference log-probabilities
scored once per pair before the loop, `finetune.reference`; the loop runs the policy pass,
chosen and rejected together) and ORPO (policy pass only). All train on the recipe's first
steps x batch_size x gradient_accumulation_steps pairs, one epoch, so DPO scores the reference
of exactly the pairs its loop trains on. Figures are the loops' real tokens per second (DPO and
ORPO count both answers' sequences) and pairs (SFT: rows) per second, medians over the rounds;
for DPO also the seconds of the reference pass and the tokens/s with them counted in (one
epoch: the precompute's worst case, each later epoch runs without it). Target: DPO tokens/s
>= 0.8x SFT's. Batches are packed (one row per micro-batch, as the recipes train), or with
--padded one row per sequence: without flash-attention a packed row's attention is quadratic
in the whole row's length, and a pair batch's row is twice an SFT batch's. Results go to
`benchmarks/results/preference_throughput.json` (`..._padded.json` with --padded).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

from benchmarks.machine import write_results
from benchmarks.train_throughput import recipe_trainer
from events.recipe import Recipe
from events.recipe_data import DataFormat, DataSection
from events.recipe_train import TrainMethod
from finetune.base_model import resolve_base_model
from recipes import load_recipe


def variants(recipe: Recipe) -> dict[str, Recipe]:
    """The recipe as SFT on prompt + chosen, as DPO and as ORPO."""
    sft_data = recipe.data.model_copy(update={
        "format": DataFormat.prompt_completion, "prompt_template": "{{ prompt }}",
        "completion_template": "{{ chosen }}"})

    def variant(method: TrainMethod, data: DataSection) -> Recipe:
        train = recipe.train.model_copy(update={"method": method})
        return recipe.model_copy(update={"train": train, "data": data})

    return {"sft": variant(TrainMethod.sft, sft_data),
            "dpo": variant(TrainMethod.dpo, recipe.data),
            "orpo": variant(TrainMethod.orpo, recipe.data)}


def first_pairs(recipe: Recipe, count: int, path: Path) -> Recipe:
    """The recipe over the first `count` rows of its training file."""
    if recipe.data.train_file is None:
        sys.exit(f"{recipe.name}: the benchmark reads a local pair file (data.train_file)")
    with open(recipe.data.train_file, encoding="utf-8") as rows:
        path.write_text("".join(line for _, line in zip(range(count), rows, strict=False)),
                        encoding="utf-8")
    return recipe.model_copy(update={"data": recipe.data.model_copy(update={
        "train_file": str(path)})})


def with_reference(done: list[dict]) -> float:
    """DPO's median tokens/s with the reference pass's seconds counted in."""
    return statistics.median(d["real_tokens"] / (d["real_tokens"] / d["tokens_per_s"]
                                                  + d["reference_s"]) for d in done)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--recipe", default="citizen-reply-de-dpo")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--models-dir", type=Path, default=Path(".aif/models"))
    parser.add_argument("--padded", action="store_true", help="padded batches, not packed")
    args = parser.parse_args()
    load = os.getloadavg()
    recipe = load_recipe(args.recipe)
    models_dir = args.models_dir.resolve()
    resolve_base_model(recipe.model.base, models_dir)  # converted once, before any timing
    rows_per_step = recipe.train.batch_size * recipe.train.gradient_accumulation_steps
    runs: dict[str, list[dict]] = {name: [] for name in variants(recipe)}
    with tempfile.TemporaryDirectory() as tmp:
        recipe = first_pairs(recipe, rows_per_step * args.steps, Path(tmp) / "pairs.jsonl")
        for r in range(args.rounds):
            for name, variant in variants(recipe).items():
                runs[name].append(recipe_trainer(variant, args.steps, not args.padded,
                                                 models_dir, Path(tmp) / f"{r}-{name}"))
    figures: dict[str, dict[str, float]] = {}
    for name, done in runs.items():
        tokens_per_s = statistics.median(d["tokens_per_s"] for d in done)
        seconds = statistics.median(d["real_tokens"] / d["tokens_per_s"] for d in done)
        figures[name] = {"tokens_per_s": tokens_per_s,
                         "rows_per_s": rows_per_step * args.steps / seconds,
                         "peak_memory_mb": max(d["peak_memory_mb"] for d in done)}
    figures["dpo"]["reference_s"] = statistics.median(d["reference_s"] for d in runs["dpo"])
    figures["dpo"]["tokens_per_s_with_reference"] = with_reference(runs["dpo"])
    figures["dpo"]["reference_tokens_per_s"] = statistics.median(  # one epoch: every pair once
        d["real_tokens"] / d["reference_s"] for d in runs["dpo"])
    sft = figures["sft"]["tokens_per_s"]
    ratios = {f"{name}_tokens_per_s_vs_sft": figures[name]["tokens_per_s"] / sft
              for name in ("dpo", "orpo")}
    ratios["dpo_with_reference_vs_sft"] = figures["dpo"]["tokens_per_s_with_reference"] / sft
    ratios["reference_pass_vs_sft"] = figures["dpo"]["reference_tokens_per_s"] / sft
    for name, got in figures.items():
        print(f"{name:5s} {got['tokens_per_s']:8.0f} tokens/s {got['rows_per_s']:6.2f} rows/s "
              f"peak {got['peak_memory_mb']:.0f} MiB")
    print(f"dpo reference pass {figures['dpo']['reference_s']:.1f} s, with it "
          f"{figures['dpo']['tokens_per_s_with_reference']:.0f} tokens/s")
    print(", ".join(f"{k} {v:.2f}x" for k, v in ratios.items()))
    path = write_results("preference_throughput" + ("_padded" if args.padded else ""), {
        "recipe": args.recipe, "steps": args.steps, "rounds": args.rounds,
        "batch_size": recipe.train.batch_size, "packing": not args.padded,
        "variants": figures, **ratios}, load,
        " ".join([Path(sys.executable).name, "-m", "benchmarks.preference_throughput",
                  *sys.argv[1:]]))
    print(f"written to {path}")


if __name__ == "__main__":
    main()
