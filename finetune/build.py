"""Everything the training loop needs, each piece from the library that owns it: the
accelerator, the base model (4-bit for QLoRA), the LoRA adapter, optimizer, schedule and data
loaders, and the objective (`build`, for `finetune.train`)."""

from __future__ import annotations

import importlib.util
import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration, set_seed
from peft import LoraConfig, PeftModel, get_peft_model
from torch.utils.data import DataLoader
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    get_scheduler,
)

from events.recipe import Recipe
from events.recipe_train import TrainMethod
from finetune.attention import register as packed_attention
from finetune.base_model import resolve_base_model
from finetune.choice_accuracy import Question, gate_choices, questions
from finetune.data import Example, TokenizedData, collator, load_examples
from finetune.dropout import use_fast_dropout
from finetune.labels import task_labels
from finetune.loss import StepLoss, sft_loss
from finetune.preference_data import indexed, pair_collator
from finetune.preference_loss import PreferenceObjective
from finetune.reference import reference_table
from finetune.sampling import BalancedSampler
from stagefiles.jobspec import TrainingSpec


@dataclass
class Setup:
    accelerator: Accelerator
    spec: TrainingSpec
    base_model_dir: Path
    tokenizer: PreTrainedTokenizerBase
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    loader: DataLoader
    validation: DataLoader | None
    objective: Callable[[torch.nn.Module, dict[str, torch.Tensor]], StepLoss]
    questions: list[Question] | None = None  # accuracy: the validation rows as asked
    reference_s: float | None = None  # dpo: seconds scoring every pair with the base model


def build(spec: TrainingSpec) -> Setup:
    """Everything the loop needs, each piece from the library that owns it."""
    recipe = spec.recipe
    cpu = not torch.cuda.is_available()
    if recipe.lora.quantize_4bit:
        _check_qlora_possible()
    if cpu:
        _use_node_cores()
    accelerator = Accelerator(
        cpu=cpu,  # several CPU processes then train together over gloo, not side by side
        gradient_accumulation_steps=recipe.train.gradient_accumulation_steps,
        mixed_precision=mixed_precision(recipe.train.precision),
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True),
    )
    set_seed(recipe.train.seed)
    # One rank converts the base model while the others wait, then they all read the cache.
    with accelerator.main_process_first():
        base_model_dir = resolve_base_model(recipe.model.base, Path(spec.model_cache_dir))
    tokenizer = AutoTokenizer.from_pretrained(base_model_dir)
    data = load_examples(recipe.data, tokenizer, recipe.train.max_seq_len, recipe.train.seed,
                         task_labels(recipe))  # the rows the pre-flight accepted
    asked = None  # the gate task's questions, where they pick the kept step
    if recipe.train.early_stopping_metric == "accuracy" and data.validation is not None:
        asked = questions(gate_choices(recipe), tokenizer, data.validation)
    if accelerator.is_main_process:
        print(
            f"finetune: {len(data.train.examples)} examples, {data.train.truncated} truncated to "
            f"max_seq_len {recipe.train.max_seq_len}",
            file=sys.stderr,
        )
    model = _base_model(base_model_dir, recipe, accelerator)
    model.config.use_cache = False  # a cache would let packed examples attend to each other
    if recipe.train.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model = adapter(model, recipe, spec.init_adapter_dir)
    if cpu:
        use_fast_dropout(model)
    if accelerator.mixed_precision == "bf16" and not recipe.lora.quantize_4bit:
        _lora_inputs_stay_bf16(model)  # over the bf16 weights _base_model loaded
    optimizer = torch.optim.AdamW(  # fused: one kernel over LoRA's 420 small tensors
        [p for p in model.parameters() if p.requires_grad],  # (6.6 against 24.8 ms a step)
        lr=recipe.train.learning_rate,
        weight_decay=recipe.train.weight_decay,
        fused=True,
    )
    # Not passed to prepare(): accelerate would step it once per process, while max_steps
    # already counts optimizer steps.
    scheduler = get_scheduler(
        recipe.train.lr_scheduler,
        optimizer,
        num_warmup_steps=math.ceil(recipe.train.warmup_ratio * recipe.train.max_steps),
        num_training_steps=recipe.train.max_steps,
    )
    pairs = recipe.train.method.preference
    collate = (pair_collator if pairs else collator)(tokenizer, recipe.train.packing)
    examples, validation_examples = _numbered(data) if pairs else (
        data.train.examples, data.validation.examples if data.validation else None)
    sampler = BalancedSampler(examples, recipe.train.seed) if recipe.train.class_balance else None
    loader = DataLoader(examples, batch_size=recipe.train.batch_size, shuffle=sampler is None,
                        sampler=sampler, collate_fn=collate)
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    validation = None
    if validation_examples is not None:  # sharded over the ranks, then reduced
        validation = accelerator.prepare(DataLoader(
            validation_examples, batch_size=recipe.train.batch_size, collate_fn=collate
        ))
    setup = Setup(accelerator, spec, base_model_dir, tokenizer, model, optimizer, scheduler,
                  loader, validation, PreferenceObjective(recipe.train) if pairs else sft_loss,
                  asked)
    if recipe.train.method is TrainMethod.dpo:
        _score_reference(setup, examples + (validation_examples or []), collate)
    return setup


def _numbered(data: TokenizedData) -> tuple[list[Example], list[Example] | None]:
    """Training and validation pairs numbered in one sequence (`preference_data.indexed`)."""
    train = indexed(data.train.examples)
    if data.validation is None:
        return train, None
    return train, indexed(data.validation.examples, start=len(train))


def _score_reference(setup: Setup, pairs: list[Example],
                     collate: Callable[[list[Example]], dict[str, torch.Tensor]]) -> None:
    """DPO: every pair's reference log-probabilities, once, before the loop
    (`finetune.reference`); the objective looks them up from then on."""
    acc, started = setup.accelerator, time.monotonic()
    table = reference_table(setup.model, pairs, collate, setup.spec.recipe.train.batch_size,
                            acc.device, acc.process_index, acc.num_processes)
    setup.objective = PreferenceObjective(setup.spec.recipe.train, acc.reduce(table, "sum"))
    setup.reference_s = time.monotonic() - started
    if acc.is_main_process:
        print(f"finetune: reference log-probabilities of {len(pairs)} pairs in "
              f"{setup.reference_s:.1f} s, once; each step runs the policy only",
              file=sys.stderr)


class StartingAdapterError(ValueError):
    """The adapter train.init_from names cannot be read on this node."""


def adapter(model: PreTrainedModel, recipe: Recipe, init_dir: str | None) -> PeftModel:
    """A fresh LoRA adapter of the recipe's shape, or the registered one train.init_from
    names (the orchestrator resolved it to `init_dir`), trainable, in its own shape."""
    if init_dir is None:
        lora = recipe.lora
        return get_peft_model(model, LoraConfig(
            r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
            target_modules=lora.target_modules, use_dora=lora.use_dora, task_type="CAUSAL_LM"))
    if not (Path(init_dir) / "adapter_config.json").is_file():
        raise StartingAdapterError(f"train.init_from {recipe.train.init_from}: its adapter "
                                   "(adapter_config.json) is not readable on this node")
    return PeftModel.from_pretrained(model, init_dir, is_trainable=True)


def _lora_inputs_stay_bf16(model: PeftModel) -> None:
    """peft casts each adapter's input to its fp32 weights' dtype; under autocast the matmul
    casts it straight back, so over bf16 frozen weights that is two full copies of every
    adapted projection's input per step, and the dropout applied in fp32 (leaving the input
    in bf16 made a step 1.08x faster on the shipped recipe, 1.24x on the variable-length
    set). Every forward pass runs under autocast (accelerate wraps the model's; the accuracy
    check enters it), which casts the small LoRA weights instead. The attribute is the one
    peft's `helpers.disable_input_dtype_casting` sets."""
    for module in model.modules():
        if hasattr(module, "cast_input_dtype_enabled"):
            module.cast_input_dtype_enabled = False


class QLoRAUnavailableError(RuntimeError):
    """4-bit training needs bitsandbytes and a CUDA GPU on the node that trains."""


def _check_qlora_possible() -> None:
    missing = [need for need, ok in (
        ("a CUDA GPU", torch.cuda.is_available()),
        ("the bitsandbytes package", importlib.util.find_spec("bitsandbytes") is not None),
    ) if not ok]
    if missing:
        raise QLoRAUnavailableError(
            f"lora.quantize_4bit (QLoRA) needs {' and '.join(missing)} on the training node, "
            "which has none; set lora.quantize_4bit: false to train a LoRA on the full-precision "
            "base, or run on a GPU partition with bitsandbytes installed"
        )


def _base_model(base_model_dir: Path, recipe: Recipe, accelerator: Accelerator) -> PreTrainedModel:
    """The frozen weights in the precision train.precision runs in (bf16 ones are half the
    memory, and autocast need not cast them again at every matmul; the LoRA weights peft adds
    stay fp32), or NF4 4-bit ones for QLoRA; attention per example of a packed row
    (`finetune.attention`)."""
    attention = packed_attention()
    if not recipe.lora.quantize_4bit:
        bf16 = accelerator.mixed_precision == "bf16"  # train.precision as this node resolved it
        return AutoModelForCausalLM.from_pretrained(
            base_model_dir, dtype=torch.bfloat16 if bf16 else torch.float32,
            attn_implementation=attention)
    from peft import prepare_model_for_kbit_training
    from transformers import BitsAndBytesConfig

    quantization = BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.bfloat16,
    )
    model = AutoModelForCausalLM.from_pretrained(
        base_model_dir, quantization_config=quantization, dtype=torch.bfloat16,
        device_map={"": accelerator.local_process_index}, attn_implementation=attention,
    )
    return prepare_model_for_kbit_training(
        model, use_gradient_checkpointing=recipe.train.gradient_checkpointing
    )


def _use_node_cores() -> None:
    """Share this node's cores among its training processes.

    The launcher runs on another host (the orchestrator, a Slurm login node), so only the
    process itself can see how many cores it may use: the CPU set Slurm or a container gives
    it, divided by the processes started on the same node. `AIF_TRAIN_THREADS` overrides it
    where the node's cores are shared with other work (a test run's parallel workers):
    OpenMP threads waiting for a core another process holds spin and burn CPU.
    """
    local_processes = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    threads = int(os.environ.get("AIF_TRAIN_THREADS") or 0)
    torch.set_num_threads(threads or max(1, len(os.sched_getaffinity(0)) // local_processes))


def precision_on_node(precision: str) -> str:
    """What the recipe's train.precision means on this node: "bf16" (autocast; the
    trainable weights stay fp32) or "fp32"."""
    if precision == "auto":
        return "bf16" if native_bf16() else "fp32"
    return precision


def mixed_precision(precision: str) -> str:
    """accelerate's name for `precision_on_node`: "bf16" or "no"."""
    return "no" if precision_on_node(precision) == "fp32" else "bf16"


def native_bf16() -> bool:
    """Whether this node's matmuls run faster in bf16: a CUDA GPU with bf16, or a CPU with
    AVX-512 BF16 or AMX (oneDNN's bf16 kernels; elsewhere torch emulates bf16 on the CPU,
    slower than fp32). torch's CPU checks are private, so their absence reads as no."""
    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    return any(getattr(torch.cpu, check, lambda: False)()
               for check in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"))
