"""Training throughput, peak memory and model FLOPs utilisation of the recipe trainer.

    .venv/bin/python -m benchmarks.gpu_mfu [--recipe grid-ticket-routing] [--steps 50]
        [--batch-size 32] [--peak-tflops 989]

Meant for a GPU node (bf16 autocast there; fp32 on CPUs, where it only proves the script
works). MFU counts a LoRA step as about 4 x parameters FLOPs per real token (forward 2x,
backward through the frozen weights 2x, no weight gradients) against the accelerator's dense
bf16 peak: 989 TFLOP/s for an H100 SXM.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM

from benchmarks.train_throughput import recipe_trainer
from finetune.base_model import resolve_base_model
from recipes import load_recipe


def parameters(model_dir: Path) -> int:
    """Parameter count without loading any weights."""
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(model_dir))
    return sum(p.numel() for p in model.parameters())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--recipe", default="grid-ticket-routing")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--peak-tflops", type=float, default=989.0,
                        help="dense bf16 peak of the accelerator (H100 SXM: 989)")
    parser.add_argument("--models-dir", type=Path, default=Path(".aif/models"))
    args = parser.parse_args()

    recipe = load_recipe(args.recipe)
    recipe = recipe.model_copy(update={"train": recipe.train.model_copy(
        update={"batch_size": args.batch_size})})
    models_dir = args.models_dir.resolve()
    n_params = parameters(resolve_base_model(recipe.model.base, models_dir))
    with tempfile.TemporaryDirectory() as tmp:
        run = recipe_trainer(recipe, args.steps, True, models_dir, Path(tmp) / "run")
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU (fp32)"
    achieved = run["tokens_per_s"] * 4 * n_params
    print(f"{device}: {args.recipe}, {args.steps} steps x batch {args.batch_size}, packed")
    print(f"parameters {n_params / 1e6:.1f} M, {run['tokens_per_s']:.0f} real tokens/s, "
          f"peak memory {run['peak_memory_mb']:.0f} MiB")
    mfu = achieved / (args.peak_tflops * 1e12)
    print(f"model FLOPs {achieved / 1e12:.3f} TFLOP/s = MFU {mfu:.2%} of "
          f"{args.peak_tflops:g} TFLOP/s")


if __name__ == "__main__":
    main()
