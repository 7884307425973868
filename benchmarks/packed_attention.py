"""Per-example attention against sdpa over the block-diagonal mask, and bf16 autocast against
fp32, on the trainer's own packed batches, in one process.

    .venv/bin/python -m benchmarks.packed_attention [--recipe grid-ticket-routing]
        [--batches 6] [--rows 200]

For the recipe's data and the generated variable-length set of `benchmarks.train_throughput`,
it builds the recipe's LoRA model twice, once with transformers' `sdpa` (a packed row gets a
block-diagonal mask) and once with `finetune.attention` (causal SDPA on each example's
slice), and times forward and backward of the training loss (`finetune.loss.sft_loss`) on
the same packed batches, in fp32 and under bf16 autocast, the variants alternating batch by
batch so that load hits all alike. The first batch warms up and is not counted. Figures:
real tokens/s of each variant and the ratios; `benchmarks/results/packed_attention.json`.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from benchmarks.machine import write_results
from benchmarks.train_throughput import variable_length_set
from events.recipe import Recipe
from finetune.attention import register
from finetune.base_model import resolve_base_model
from finetune.build import adapter
from finetune.data import collator, load_examples
from finetune.labels import task_labels
from finetune.loss import sft_loss
from recipes import load_recipe

VARIANTS = [(attention, precision) for precision in ("fp32", "bf16")
            for attention in ("sdpa", "per-example")]


def _model(model_dir: Path, recipe: Recipe, attention: str) -> torch.nn.Module:
    torch.manual_seed(recipe.train.seed)
    model = AutoModelForCausalLM.from_pretrained(
        model_dir, dtype=torch.float32,
        attn_implementation="sdpa" if attention == "sdpa" else register())
    model.config.use_cache = False
    return adapter(model, recipe, None).train()  # the trainer's LoRA, fresh


def measure(recipe: Recipe, model_dir: Path, batches: int) -> dict[str, Any]:
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    examples = load_examples(recipe.data, tokenizer, recipe.train.max_seq_len,
                             recipe.train.seed, task_labels(recipe)).train.examples
    size = recipe.train.batch_size
    collate = collator(tokenizer, packing=True)
    packed = [collate(examples[i * size:(i + 1) * size]) for i in range(batches)]
    models = {attention: _model(model_dir, recipe, attention) for attention in ("sdpa",
                                                                                "per-example")}
    seconds = {variant: 0.0 for variant in VARIANTS}
    for index, batch in enumerate(packed):
        order = VARIANTS if index % 2 == 0 else VARIANTS[::-1]
        for attention, precision in order:
            model = models[attention]
            started = time.perf_counter()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
                loss = sft_loss(model, batch).loss
            loss.backward()
            model.zero_grad()
            if index:  # the first batch warms up
                seconds[(attention, precision)] += time.perf_counter() - started
    tokens = sum(int(batch["input_ids"].numel()) for batch in packed[1:])
    rate = {f"{a}, {p}": tokens / s for (a, p), s in seconds.items()}
    return {
        "batches": batches - 1, "batch_size": size, "tokens": tokens, "tokens_per_s": rate,
        "per_example_vs_sdpa": {p: rate[f"per-example, {p}"] / rate[f"sdpa, {p}"]
                                for p in ("fp32", "bf16")},
        "bf16_vs_fp32": {a: rate[f"{a}, bf16"] / rate[f"{a}, fp32"]
                         for a in ("sdpa", "per-example")},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--recipe", default="grid-ticket-routing")
    parser.add_argument("--batches", type=int, default=6, help="the first one warms up")
    parser.add_argument("--rows", type=int, default=200, help="rows of the variable-length set")
    parser.add_argument("--models-dir", type=Path, default=Path(".aif/models"))
    args = parser.parse_args()
    if args.batches < 2:
        parser.error("--batches: at least 2 (the first one warms up)")

    load = os.getloadavg()
    torch.set_num_threads(len(os.sched_getaffinity(0)))
    recipe = load_recipe(args.recipe)
    model_dir = resolve_base_model(recipe.model.base, args.models_dir.resolve())
    figures = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, data_recipe in (
            (args.recipe, recipe),
            ("variable-length", variable_length_set(recipe, Path(tmp) / "var.jsonl", args.rows)),
        ):
            figures[name] = got = measure(data_recipe, model_dir, args.batches)
            print(f"{name}: {got['batches']} batches of {got['batch_size']}, {got['tokens']} "
                  "real tokens, forward and backward")
            for variant, rate in got["tokens_per_s"].items():
                print(f"  {variant:22} {rate:8.0f} tokens/s")
            print("  per-example / sdpa: " + ", ".join(
                f"{p} {r:.2f}x" for p, r in got["per_example_vs_sdpa"].items()))
            print("  bf16 / fp32: " + ", ".join(
                f"{a} {r:.2f}x" for a, r in got["bf16_vs_fp32"].items()), flush=True)
    path = write_results("packed_attention", {"datasets": figures}, load,
                         "python -m benchmarks.packed_attention " + " ".join(sys.argv[1:]))
    print(f"results in {path}")


if __name__ == "__main__":
    main()
