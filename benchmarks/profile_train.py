"""Where the recipe trainer's loop spends its time: torch.profiler over a few steps.

    .venv/bin/python -m benchmarks.profile_train [--recipe grid-ticket-routing] [--steps 3]
        [--rows 200] [--top 15] [--precision auto|fp32|bf16]

Runs `finetune.train`'s own build and loop in this process on the recipe's data and on the
generated variable-length set of `benchmarks.train_throughput`: one warm-up step, then
`--steps` steps under the profiler. Each op's own (self) CPU time goes to one category: frozen
matmuls (forward and input-gradient), LoRA matmuls (a dimension equal to the rank),
attention (everything inside scaled_dot_product_attention and its backward), the optimizer
(inside AdamW's step), elementwise and norm (the rest of the aten ops) and, as what the ops
do not cover, Python and framework overhead. The top ops table and the shares go to
`benchmarks/results/profile_train.json`.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from torch.autograd.profiler_util import FunctionEvent
from torch.profiler import ProfilerActivity, profile

from benchmarks.machine import write_results
from benchmarks.train_throughput import variable_length_set, with_precision
from events.recipe import Recipe
from finetune import train as trainer
from finetune.build import build
from recipes import load_recipe
from stagefiles.jobspec import TrainingSpec

MATMULS = {"aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm"}
# Ops that only wrap others: their own time is dispatch, their children are counted.
ATTENTION = ("scaled_dot_product", "ScaledDotProduct", "attention")
OPTIMIZER = "Optimizer.step"


def _category(event: FunctionEvent, rank: int) -> str:
    """The category of one op's own time, from the op itself and the ops around it."""
    outer = []
    parent = event
    while parent is not None:
        outer.append(parent.name)
        parent = parent.cpu_parent
    if any(name.startswith(OPTIMIZER) for name in outer):
        return "optimizer"
    if any(tag in name for name in outer for tag in ATTENTION):
        return "attention"
    if event.name in MATMULS:
        shapes = [s for s in event.input_shapes if len(s) >= 2]
        return "LoRA matmul" if any(rank in s[-2:] for s in shapes) else "frozen matmul"
    if event.name.startswith("enumerate(DataLoader)"):
        return "data collation"
    return "elementwise, norm, other ops"


def profile_loop(recipe: Recipe, models_dir: Path, work: Path, steps: int, top: int,
                 threads: int | None = None) -> dict:
    train = recipe.train.model_copy(update={
        "max_steps": 1, "packing": True, "checkpoint_steps": None, "logging_steps": 1,
        "eval_steps": None,
    })
    spec = TrainingSpec(job_id="profile", tenant="profile",
                        recipe=recipe.model_copy(update={"train": train}, deep=True),
                        work_dir=str(work), model_cache_dir=str(models_dir))
    work.mkdir(parents=True)
    setup = build(spec)
    if threads:
        torch.set_num_threads(threads)
    setup = dataclasses.replace(setup, validation=None)
    trainer.train(setup)  # warm-up step: first-call costs are not the loop's
    longer = spec.recipe.model_copy(update={"train": train.model_copy(update={"max_steps": steps})})
    setup = dataclasses.replace(setup, spec=spec.model_copy(update={"recipe": longer}))
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        started = time.perf_counter()
        outcome = trainer.train(setup)
        wall = time.perf_counter() - started
    events = [e for e in prof.events() if e.device_type.name == "CPU"]
    shares: dict[str, float] = {}
    for event in events:
        name = _category(event, recipe.lora.r)
        shares[name] = shares.get(name, 0.0) + event.self_cpu_time_total / 1e6
    shares["python and framework overhead"] = max(0.0, wall - sum(shares.values()))
    table = sorted(prof.key_averages(), key=lambda a: a.self_cpu_time_total, reverse=True)
    return {
        "steps": steps, "wall_s": wall, "real_tokens": outcome.train_tokens,
        "tokens_per_s": outcome.tokens_per_s, "threads": torch.get_num_threads(),
        "attention_implementation": setup.model.config._attn_implementation,
        "precision": setup.accelerator.mixed_precision,
        "share": {k: v / wall for k, v in sorted(shares.items(), key=lambda kv: -kv[1])},
        "top_ops": [{"op": a.key, "self_s": a.self_cpu_time_total / 1e6, "calls": a.count}
                    for a in table[:top]],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--recipe", default="grid-ticket-routing")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--rows", type=int, default=200, help="rows of the variable-length set")
    parser.add_argument("--top", type=int, default=15)
    parser.add_argument("--threads", type=int,
                        help="intra-op threads instead of the trainer's own choice (all cores)")
    parser.add_argument("--models-dir", type=Path, default=Path(".aif/models"))
    parser.add_argument("--precision", choices=["auto", "fp32", "bf16"],
                        help="train.precision (default: the recipe's)")
    args = parser.parse_args()

    load = os.getloadavg()
    recipe = with_precision(load_recipe(args.recipe), args.precision)
    figures: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, data_recipe in (
            (args.recipe, recipe),
            ("variable-length", variable_length_set(recipe, Path(tmp) / "var.jsonl", args.rows)),
        ):
            figures[name] = got = profile_loop(data_recipe, args.models_dir.resolve(),
                                               Path(tmp) / name, args.steps, args.top,
                                               args.threads)
            print(f"{name}: {args.steps} steps, {got['wall_s']:.1f} s, "
                  f"{got['tokens_per_s']:.0f} real tokens/s, attention "
                  f"{got['attention_implementation']}, {got['threads']} threads, mixed "
                  f"precision {got['precision']}")
            for category, share in got["share"].items():
                print(f"  {category:32} {share:6.1%}")
            for op in got["top_ops"]:
                print(f"  {op['op'][:60]:60} {op['self_s']:8.2f} s {op['calls']:7d} calls")
            sys.stdout.flush()
    path = write_results("profile_train", {"datasets": figures}, load,
                         "python -m benchmarks.profile_train " + " ".join(sys.argv[1:]))
    print(f"results in {path}")


if __name__ == "__main__":
    main()
