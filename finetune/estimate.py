"""The compute estimate of the pre-flight report: what training will process, and its cost.

Tokens are counted the way `finetune.train` consumes them, so the estimate can be checked
against the TrainingResult of the run:

- each rank's DataLoader yields `L` micro-batches of `batch_size` rows per epoch: one rank
  `ceil(n / batch_size)`, the last one short; N ranks (accelerate's `even_batches`)
  `ceil(ceil(n / batch_size) / N)` each, every one full, topped up with rows from the start;
- an optimizer step takes `gradient_accumulation_steps` micro-batches, and one more at the end
  of each epoch with what is left (accelerate syncs gradients at the end of the dataloader), so
  an epoch is `ceil(L / gradient_accumulation_steps)` steps;
- `max_steps` steps are whole epochs plus a part; a row is its tokens after truncation to
  `max_seq_len`, padding never counted (training quotes the same real tokens). Whole epochs
  of one rank are exact; the part epoch and N-rank top-ups use the mean row length.

FLOPs are `stagefiles.compute.training_flops` over those tokens. Duration and device-hours divide
by a throughput: the tenant's last measured figure for the same base model and launcher if the
orchestrator passed one, else the site's rough figure for the device kind.

DPO costs more than those tokens at that figure: before the loop, one forward pass (no
gradients) scores every training pair with the reference (`finetune.reference`), and the loop
itself runs at its own rate. Both are counted as ratios to SFT's tokens/s that
`benchmarks.preference_throughput` measured in one run (docs/benchmarks.md), and the
reference pass adds its forward FLOPs. A tenant's measured figure is taken as SFT's whatever
the method of the job that measured it (the loop ratio is near 1, so the error is small).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch

from events.recipe import Recipe
from events.recipe_train import TrainMethod
from finetune.base_model import gguf_file, gguf_parameter_count, resolve_base_model
from finetune.data import Split
from stagefiles.compute import forward_flops, training_flops
from stagefiles.jobspec import Throughput
from stagefiles.preflight_report import Estimate

DPO_LOOP_VS_SFT = 1.22
"""DPO's loop tokens/s (policy forward and backward over both answers, the reference looked
up) over SFT's on the same rows: `dpo_tokens_per_s_vs_sft` of `benchmarks.preference_throughput
--steps 3 --rounds 2` (citizen-reply-de-dpo, 2-core AMD EPYC CPU at load 3.5 to 5,
2026-12-07T16:46Z; rounds 1.24x and 1.21x). A pair batch's two rows amortise the step's
fixed costs over twice SFT's tokens, hence above 1 on that box; a GPU may differ."""
REFERENCE_VS_SFT = 4.2
"""Tokens/s of DPO's reference pass (no_grad forward over each pair's two sequences, once)
over SFT's loop tokens/s: `reference_pass_vs_sft` of the same run (rounds 4.7x and 3.7x)."""


@dataclass(frozen=True)
class Consumed:
    steps: int
    micro_batches: int  # per rank
    examples: int  # over all ranks
    tokens: int


def consumed(lengths: list[int], batch_size: int, accumulation: int, ranks: int,
             max_steps: int) -> Consumed:
    """Rows and tokens `max_steps` optimizer steps train on (see the module docstring);
    `lengths` are the usable rows' token counts after truncation, at least one."""
    n = len(lengths)
    batches = math.ceil(n / batch_size)
    per_rank = batches if ranks == 1 else math.ceil(batches / ranks)
    epoch_examples = n if ranks == 1 else per_rank * ranks * batch_size
    mean = sum(lengths) / n
    epoch_tokens = sum(lengths) if ranks == 1 else epoch_examples * mean
    epochs, rest_steps = divmod(max_steps, math.ceil(per_rank / accumulation))
    rest_examples = rest_steps * accumulation * ranks * batch_size
    return Consumed(
        steps=max_steps,
        micro_batches=epochs * per_rank + rest_steps * accumulation,
        examples=epochs * epoch_examples + rest_examples,
        tokens=round(epochs * epoch_tokens + rest_examples * mean),
    )


def parameter_count(ref: str, cache_dir: Path) -> int:
    """Parameters of the base model without loading its weights: a GGUF file's tensor
    table, the safetensors files' headers, or else the model built from its config on the
    meta device (tied weights once)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    gguf = gguf_file(ref) if ref.strip() else None
    if gguf is not None:
        return gguf_parameter_count(gguf, cache_dir)
    folder = resolve_base_model(ref, cache_dir)
    counted = safetensors_parameter_count(folder)
    if counted is not None:
        return counted
    config = AutoConfig.from_pretrained(folder)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return sum(p.numel() for p in model.parameters())


FLOAT_DTYPES = frozenset({"F64", "F32", "F16", "BF16"})


def safetensors_parameter_count(folder: Path) -> int | None:
    """The parameters a transformers checkpoint's safetensors headers list, without
    building the model (whose modeling code costs the pre-flight more than a second to
    import); None where the headers cannot say it exactly: no safetensors checkpoint in the
    transformers layout, a quantised (non-float) tensor, or a tied output layer stored as
    well, whose config does not say it is tied."""
    from safetensors import safe_open

    index = folder / "model.safetensors.index.json"
    if index.is_file():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    elif (folder / "model.safetensors").is_file():
        files = ["model.safetensors"]
    else:
        return None
    shapes: dict[str, list[int]] = {}
    for name in files:
        with safe_open(folder / name, framework="pt") as fh:
            for key in fh.keys():  # noqa: SIM118 (a safetensors handle, not a dict)
                tensor = fh.get_slice(key)
                if tensor.get_dtype() not in FLOAT_DTYPES:
                    return None
                shapes[key] = tensor.get_shape()
    if "lm_head.weight" in shapes:
        tied = json.loads((folder / "config.json").read_text()).get("tie_word_embeddings")
        if tied is None:
            return None
        if tied:
            del shapes["lm_head.weight"]
    return sum(math.prod(shape) for shape in shapes.values())


def device_kind() -> str:
    """What this node trains on; the pre-flight stage runs where training will."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def _data_bytes(recipe: Recipe) -> int | None:
    """Bytes of the local training (and validation) file; None for a hub dataset, whose
    size is not known before it is read."""
    if recipe.data.train_file is None:
        return None
    files = [Path(f) for f in (recipe.data.train_file, recipe.data.validation_file) if f]
    return sum(f.stat().st_size for f in files if f.is_file())


@dataclass(frozen=True)
class Estimator:
    """Everything the estimate needs besides the data: the model's size and the throughput."""

    parameters: int
    throughput: Throughput
    device: str

    def __call__(self, recipe: Recipe, train: Split) -> Estimate | None:
        """None when no row is usable: nothing would train."""
        if not train.encoded:
            return None
        t, tp = recipe.train, self.throughput
        done = consumed([e.trained_length for e in train.encoded], t.batch_size,
                        t.gradient_accumulation_steps, tp.devices, t.max_steps)
        if tp.measured_tokens_per_s is not None:
            per_device, source = tp.measured_tokens_per_s, f"measured by job {tp.measured_job}"
        else:
            per_device = tp.tokens_per_s[self.device]
            source = f"site figure {per_device:g} tokens/s per {self.device}"
        total = per_device * tp.devices
        duration_s = done.tokens / total
        flops = training_flops(self.parameters, done.tokens)
        if t.method is TrainMethod.dpo:
            reference = sum(e.trained_length for e in train.encoded)
            duration_s = (done.tokens / (total * DPO_LOOP_VS_SFT)
                          + reference / (total * REFERENCE_VS_SFT))
            total *= DPO_LOOP_VS_SFT
            flops += forward_flops(self.parameters, reference)
            source += (f"; dpo: the loop at {DPO_LOOP_VS_SFT:g}x that, and a reference pass "
                       f"over {reference:,} tokens at {REFERENCE_VS_SFT:g}x, as measured by "
                       "benchmarks.preference_throughput")
        return Estimate(
            steps=done.steps, examples=done.examples, tokens=done.tokens,
            parameters=self.parameters, flops=flops,
            data_bytes=_data_bytes(recipe), launcher=tp.launcher, device=self.device,
            devices=tp.devices, tokens_per_s=total, throughput_from=source,
            duration_s=duration_s, device_hours=duration_s * tp.devices / 3600,
        )

    @classmethod
    def on_this_node(cls, base_model: str, cache_dir: Path, throughput: Throughput) -> Estimator:
        return cls(parameter_count(base_model, cache_dir), throughput, device_kind())
