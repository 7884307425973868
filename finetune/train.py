"""LoRA fine-tuning worker: `accelerate launch ... -m finetune.train SPEC` or `python -m ...`.

It reads a frozen TrainingSpec and answers only with files in the job directory (progress
lines while it runs, the adapter and a TrainingResult at the end), so it can run on any node
that sees the shared filesystem. The flow reads top to bottom: setup, train, save.

Exit codes: 0 done, 2 the spec, data or base model is unusable, 3 the loss diverged, 4 stopped
by SIGTERM (cancel or preemption) after writing a checkpoint. Note that `accelerate launch`
reports any failure of its workers as 1; the reason is on stderr. A run started again in the
same work directory resumes from the newest complete checkpoint.
"""

from __future__ import annotations

import importlib.util
import math
import os
import resource
import signal
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration, set_seed
from peft import LoraConfig, PeftModel, get_peft_model
from pydantic import ValidationError
from torch.utils.data import DataLoader
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    get_scheduler,
)

from events.recipe import Recipe
from finetune import checkpoint
from finetune.base_model import BaseModelError, resolve_base_model
from finetune.data import (
    DataValidationError,
    TokenizerUnfitError,
    collator,
    load_examples,
    real_tokens,
)
from finetune.early_stopping import EarlyStopping
from finetune.labels import task_labels
from finetune.loss import StepLoss, sft_loss
from finetune.model_card import write_extras, write_manifest
from finetune.preference_data import pair_collator
from finetune.preference_loss import PreferenceObjective
from finetune.sampling import BalancedSampler
from stagefiles.jobspec import (
    PROGRESS_LOG,
    TRAINING_RESULT,
    FailureKind,
    ProgressLine,
    TrainingResult,
    TrainingSpec,
    record_failure,
)

EXIT_BAD_INPUT = 2
EXIT_DIVERGED = 3
EXIT_STOPPED = 4
ADAPTER_DIR = "adapter"
MERGED_DIR = "merged"


class NonFiniteLossError(RuntimeError):
    """The loss or the gradient norm became NaN, infinite or explosive; more steps would only
    train on garbage."""


class Stopped(Exception):
    """SIGTERM arrived; a checkpoint holds the run so far."""


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


@dataclass(frozen=True)
class Outcome:
    steps: int
    final_loss: float
    train_tokens: int
    validation_loss: float | None
    tokens_per_s: float
    best_step: int | None = None  # early stopping: the step whose adapter is kept
    stopped_early: bool = False


class StopFlag:
    """Set by SIGTERM; the loop checks it between optimizer steps, on every rank at once."""

    def __init__(self) -> None:
        self.set = False
        signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum: int, frame: object) -> None:
        self.set = True


def main(spec_path: str) -> int:
    started = time.monotonic()
    spec = TrainingSpec.read(Path(spec_path))
    Path(spec.work_dir).mkdir(parents=True, exist_ok=True)
    stop = StopFlag()
    setup = build(spec)
    try:
        outcome = train(setup, stop)
    except NonFiniteLossError as exc:
        print(f"finetune: {exc}; stopping without saving an adapter", file=sys.stderr)
        return EXIT_DIVERGED
    except Stopped as exc:
        print(f"finetune: {exc}", file=sys.stderr)
        return EXIT_STOPPED
    save(setup, outcome, time.monotonic() - started)
    setup.accelerator.end_training()
    return 0


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
        mixed_precision=_mixed_precision(),
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True),
    )
    set_seed(recipe.train.seed)
    # One rank converts the base model while the others wait, then they all read the cache.
    with accelerator.main_process_first():
        base_model_dir = resolve_base_model(recipe.model.base, Path(spec.model_cache_dir))
    tokenizer = AutoTokenizer.from_pretrained(base_model_dir)
    data = load_examples(recipe.data, tokenizer, recipe.train.max_seq_len, recipe.train.seed,
                         task_labels(recipe))  # the rows the pre-flight accepted
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
    lora = recipe.lora
    model = get_peft_model(
        model,
        LoraConfig(
            r=lora.r,
            lora_alpha=lora.alpha,
            lora_dropout=lora.dropout,
            target_modules=lora.target_modules,
            use_dora=lora.use_dora,
            task_type="CAUSAL_LM",
        ),
    )
    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad],
        lr=recipe.train.learning_rate,
        weight_decay=recipe.train.weight_decay,
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
    examples = data.train.examples
    sampler = BalancedSampler(examples, recipe.train.seed) if recipe.train.class_balance else None
    loader = DataLoader(examples, batch_size=recipe.train.batch_size, shuffle=sampler is None,
                        sampler=sampler, collate_fn=collate)
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    validation = None
    if data.validation is not None:  # sharded over the ranks, then reduced
        validation = accelerator.prepare(DataLoader(
            data.validation.examples, batch_size=recipe.train.batch_size, collate_fn=collate
        ))
    return Setup(accelerator, spec, base_model_dir, tokenizer, model, optimizer, scheduler, loader,
                 validation, PreferenceObjective(recipe.train) if pairs else sft_loss)


def train(setup: Setup, stop: StopFlag | None = None) -> Outcome:
    """Run max_steps optimizer steps, cycling over the (sharded, reshuffled) data; resume
    from the newest complete checkpoint and write new ones as the recipe asks."""
    acc, model, optimizer = setup.accelerator, setup.model, setup.optimizer
    train_cfg = setup.spec.recipe.train
    work_dir = Path(setup.spec.work_dir)
    progress = work_dir / PROGRESS_LOG
    model.train()
    resumed = checkpoint.load_latest(work_dir, acc.unwrap_model(model), optimizer,
                                     setup.scheduler)
    done = resumed or checkpoint.Counters(step=0, micro_batches=0, tokens=0, loss=math.nan)
    if resumed and acc.is_main_process:
        print(f"finetune: resuming from the checkpoint at step {done.step}", file=sys.stderr)
    batches = _cycle(setup.loader, skip=done.micro_batches)
    step, tokens, consumed, loss = done.step, done.tokens, done.micro_batches, done.loss
    micro_batches = 0
    stopper = None if train_cfg.early_stopping_patience is None else EarlyStopping(
        work_dir, train_cfg.early_stopping_patience, train_cfg.early_stopping_min_delta,
        acc.is_main_process)
    stopped_early = False
    window_loss = torch.zeros((), device=acc.device)
    window_metrics: dict[str, torch.Tensor] = {}  # the objective's own, e.g. DPO's rewards
    window_tokens = torch.zeros((), device=acc.device, dtype=torch.long)
    started = time.monotonic()
    while step < train_cfg.max_steps:
        batch = next(batches)
        with acc.accumulate(model):
            step_loss = setup.objective(model, batch)
            batch_loss = step_loss.loss
            acc.backward(batch_loss)
            if acc.sync_gradients:  # norm of the synchronised gradients: equal on every rank
                norm = float(acc.clip_grad_norm_(model.parameters(), train_cfg.max_grad_norm))
                if not math.isfinite(norm):  # name the cause when it is the loss itself
                    check_finite(float(batch_loss), step + 1)
                check_grad_norm(norm, train_cfg.grad_norm_limit, step + 1)
            optimizer.step()
            optimizer.zero_grad()
        window_loss += batch_loss.detach()
        for name, value in step_loss.metrics.items():
            window_metrics[name] = window_metrics.get(name, 0) + value.detach()
        micro_batches += 1
        consumed += 1
        window_tokens += real_tokens(batch)
        if not acc.sync_gradients:
            continue
        setup.scheduler.step()
        step += 1
        # Collectives, so every rank computes them and every rank stops together on NaN.
        loss = acc.reduce(window_loss, "mean").item() / micro_batches
        tokens += int(acc.reduce(window_tokens, "sum").item())
        metrics = {name: acc.reduce(value, "mean").item() / micro_batches
                   for name, value in sorted(window_metrics.items())}
        window_metrics.clear()
        window_loss.zero_()
        window_tokens.zero_()
        micro_batches = 0
        check_finite(loss, step)
        counters = checkpoint.Counters(step=step, micro_batches=consumed, tokens=tokens,
                                       loss=loss)
        stopping = _any_rank(acc, stop is not None and stop.set)
        every = train_cfg.checkpoint_steps
        if stopping or (every and step % every == 0 and step < train_cfg.max_steps):
            _save_checkpoint(setup, counters)
        if stopping:
            raise Stopped(f"SIGTERM at step {step}; checkpoint written, rerun to resume")
        if train_cfg.eval_steps and step % train_cfg.eval_steps == 0 and step < train_cfg.max_steps:
            validation = _log_validation(setup, progress, step)
            if stopper is not None and validation is not None and stopper.should_stop(
                    validation, step, acc.unwrap_model(model)):
                stopped_early = True
                break
        if acc.is_main_process and (
            step % train_cfg.logging_steps == 0 or step == train_cfg.max_steps
        ):
            elapsed = time.monotonic() - started
            line = ProgressLine(
                stage="training",
                step=step,
                total_steps=train_cfg.max_steps,
                loss=loss,
                tokens_per_s=(tokens - done.tokens) / elapsed,
                eta_s=elapsed / (step - done.step) * (train_cfg.max_steps - step),
                **metrics,
            )
            with open(progress, "a") as fh:
                fh.write(line.model_dump_json() + "\n")
    throughput = (tokens - done.tokens) / (time.monotonic() - started)
    if stopper is None or setup.validation is None:
        return Outcome(step, loss, tokens, _log_validation(setup, progress, step), throughput)
    if not stopped_early:  # the last step may be the best one
        final = _log_validation(setup, progress, step)
        stopper.should_stop(final if final is not None else math.inf, step,
                            acc.unwrap_model(model))
    best_step = stopper.restore(acc.unwrap_model(model))
    if acc.is_main_process:
        print(f"finetune: {'stopped early at' if stopped_early else 'ran to'} step {step}; "
              f"keeping the adapter of step {best_step}, the best validation loss",
              file=sys.stderr)
    best_loss = stopper.best.loss if stopper.best is not None else None
    return Outcome(step, loss, tokens, best_loss, throughput, best_step, stopped_early)


def validation_loss(setup: Setup) -> float | None:
    """Mean loss over the validation split (per trained token, or per pair for dpo/orpo),
    on every rank (collectives)."""
    if setup.validation is None:
        return None
    acc, model = setup.accelerator, setup.model
    total = torch.zeros((), device=acc.device)
    count = torch.zeros((), device=acc.device)
    model.eval()
    with torch.no_grad():
        for batch in setup.validation:
            step_loss = setup.objective(model, batch)
            total += step_loss.loss * step_loss.weight
            count += step_loss.weight
    model.train()
    return (acc.reduce(total, "sum") / acc.reduce(count, "sum")).item()


def _log_validation(setup: Setup, progress: Path, step: int) -> float | None:
    """Validation loss, appended to the progress log as a `validation` line."""
    loss = validation_loss(setup)
    if loss is not None and setup.accelerator.is_main_process:
        total = setup.spec.recipe.train.max_steps
        line = ProgressLine(stage="validation", step=step, total_steps=total, loss=loss)
        with open(progress, "a") as fh:
            fh.write(line.model_dump_json() + "\n")
    return loss


def _any_rank(acc: Accelerator, flag: bool) -> bool:
    """True on every rank if it is true on one: ranks must stop at the same step."""
    return bool(acc.reduce(torch.tensor(int(flag), device=acc.device), "sum").item())


def _save_checkpoint(setup: Setup, counters: checkpoint.Counters) -> None:
    acc = setup.accelerator
    acc.wait_for_everyone()
    if acc.is_main_process:
        checkpoint.save(Path(setup.spec.work_dir), acc.unwrap_model(setup.model),
                        setup.optimizer, setup.scheduler, counters)
    acc.wait_for_everyone()


def check_grad_norm(norm: float, limit: float, step: int) -> None:
    if not (math.isfinite(norm) and norm <= limit):
        raise NonFiniteLossError(
            f"gradient norm is {norm:.4g} at step {step} (limit {limit:g}); lower the learning "
            "rate or check the data"
        )


def check_finite(loss: float, step: int) -> None:
    if not math.isfinite(loss):
        raise NonFiniteLossError(
            f"loss is {loss} at step {step}; lower the learning rate or check the data"
        )


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
            wall_s=wall_s,
            processes=acc.num_processes,
            tokens_per_s=outcome.tokens_per_s,
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
    dtype = torch.float32 if _mixed_precision() == "no" else torch.bfloat16
    base = AutoModelForCausalLM.from_pretrained(setup.base_model_dir, dtype=dtype)
    merged = PeftModel.from_pretrained(base, adapter_dir).merge_and_unload()
    merged.save_pretrained(merged_dir, safe_serialization=True)
    setup.tokenizer.save_pretrained(merged_dir)
    return write_manifest(merged_dir)


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
    """fp32 weights (bf16 autocast on GPUs), or NF4 4-bit ones for QLoRA."""
    if not recipe.lora.quantize_4bit:
        return AutoModelForCausalLM.from_pretrained(base_model_dir, dtype=torch.float32)
    from peft import prepare_model_for_kbit_training
    from transformers import BitsAndBytesConfig

    quantization = BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.bfloat16,
    )
    model = AutoModelForCausalLM.from_pretrained(
        base_model_dir, quantization_config=quantization, dtype=torch.bfloat16,
        device_map={"": accelerator.local_process_index},
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


def peak_memory() -> float:
    """Peak MiB of this process: GPU memory allocated, or the resident set on CPUs; the
    throughput benchmark measures its baseline script with the same function."""
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _mixed_precision() -> str:
    """bf16 autocast where the GPU has it; CPUs train in fp32, where bf16 is slow or absent."""
    return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"


def _cycle(loader: DataLoader, skip: int = 0) -> Iterator[dict[str, torch.Tensor]]:
    """Endless batches; each pass over the prepared loader reshuffles with a new epoch seed.

    `skip` micro-batches were trained before a resume: the data order goes on from there.
    """
    epoch, within = divmod(skip, len(loader))
    loader.set_epoch(epoch)  # type: ignore[attr-defined]  # accelerate's prepared loader
    for index, batch in enumerate(loader):
        if index >= within:
            yield batch
    while True:
        yield from loader


def _cli(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m finetune.train TRAINING_SPEC_JSON", file=sys.stderr)
        return EXIT_BAD_INPUT
    spec_path = Path(argv[0])
    if not spec_path.is_file():  # a wrong argument; any OSError below is the node's
        print(f"finetune: no training spec at {spec_path}", file=sys.stderr)
        return EXIT_BAD_INPUT
    kind, code = FailureKind.final, EXIT_BAD_INPUT
    try:
        code = main(argv[0])
    except ValidationError as exc:
        reason = f"unusable training spec {spec_path.name} ({exc.error_count()} errors)"
    except (DataValidationError, TokenizerUnfitError, BaseModelError,
            QLoRAUnavailableError) as exc:
        reason = str(exc)
    except OSError as exc:  # a full disk, a lost mount: the next attempt resumes
        kind, code = FailureKind.retryable, 1
        reason = f"training: {type(exc).__name__}: {exc.strerror or 'I/O error'}"
    else:
        if code == EXIT_DIVERGED:
            record_failure(spec_path, FailureKind.final, "the training loss diverged")
        return code
    print(f"finetune: {reason}", file=sys.stderr)
    record_failure(spec_path, kind, reason)
    return code


if __name__ == "__main__":
    sys.exit(_cli(sys.argv[1:]))
