"""What a finished run leaves: the adapter (and, if asked, the merged model) with its
tokenizer, checksums and model card, then the TrainingResult the orchestrator reads."""

from __future__ import annotations

import resource
from dataclasses import dataclass
from pathlib import Path

import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM

from finetune.build import Setup
from finetune.model_card import write_extras, write_manifest
from stagefiles.jobspec import TRAINING_RESULT, TrainingResult

ADAPTER_DIR = "adapter"
MERGED_DIR = "merged"


@dataclass(frozen=True)
class Outcome:
    steps: int
    final_loss: float
    train_tokens: int
    validation_loss: float | None
    tokens_per_s: float
    best_step: int | None = None  # early stopping: the step whose adapter is kept
    stopped_early: bool = False
    validation_accuracy: float | None = None  # early stopping on accuracy: the kept step's


def save(setup: Setup, outcome: Outcome, wall_s: float) -> None:
    """Main process only: safetensors adapter, its tokenizer, checksums, then the result."""
    acc = setup.accelerator
    acc.wait_for_everyone()
    if acc.is_main_process:
        work_dir = Path(setup.spec.work_dir)
        adapter_dir = work_dir / ADAPTER_DIR
        model: PeftModel = acc.unwrap_model(setup.model)
        model.save_pretrained(adapter_dir, safe_serialization=True)
        setup.tokenizer.save_pretrained(adapter_dir)
        checksums = write_extras(adapter_dir, setup.spec, setup.base_model_dir, outcome.steps,
                                 outcome.final_loss, outcome.train_tokens,
                                 outcome.validation_loss)
        peak_memory_mb = peak_memory()  # of training, before a merge loads another copy
        merged_dir = work_dir / MERGED_DIR
        merged = (_save_merged(setup, adapter_dir, merged_dir)
                  if setup.spec.recipe.lora.save_merged else {})
        TrainingResult(
            adapter_dir=str(adapter_dir),
            base_model_dir=str(setup.base_model_dir),
            steps=outcome.steps,
            final_loss=outcome.final_loss,
            train_tokens=outcome.train_tokens,
            validation_loss=outcome.validation_loss,
            validation_accuracy=outcome.validation_accuracy,
            wall_s=wall_s,
            processes=acc.num_processes,
            precision="fp32" if acc.mixed_precision == "no" else acc.mixed_precision,
            tokens_per_s=outcome.tokens_per_s,
            reference_s=setup.reference_s,
            peak_memory_mb=peak_memory_mb,
            best_step=outcome.best_step,
            stopped_early=outcome.stopped_early,
            files_sha256=checksums,
            merged_dir=str(merged_dir) if merged else None,
            merged_files_sha256=merged,
        ).write(work_dir / TRAINING_RESULT)
    acc.wait_for_everyone()


def _save_merged(setup: Setup, adapter_dir: Path, merged_dir: Path) -> dict[str, str]:
    """The saved adapter merged into a fresh full-precision base (never into the 4-bit one
    QLoRA trained on, whose rounding would be baked in); returns file name -> sha256."""
    dtype = torch.float32 if setup.accelerator.mixed_precision == "no" else torch.bfloat16
    base = AutoModelForCausalLM.from_pretrained(setup.base_model_dir, dtype=dtype)
    merged = PeftModel.from_pretrained(base, adapter_dir).merge_and_unload()
    merged.save_pretrained(merged_dir, safe_serialization=True)
    setup.tokenizer.save_pretrained(merged_dir)
    return write_manifest(merged_dir)


def peak_memory() -> float:
    """Peak MiB of this process: GPU memory allocated, or the resident set on CPUs; the
    throughput benchmark measures its baseline script with the same function."""
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
