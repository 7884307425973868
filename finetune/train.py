"""LoRA fine-tuning worker: `accelerate launch ... -m finetune.train SPEC` or `python -m ...`.

It reads a frozen TrainingSpec and answers only with files in the job directory (progress
lines while it runs, the adapter and a TrainingResult at the end), so it can run on any node
that sees the shared filesystem. The flow reads top to bottom: setup (`finetune.build`),
train (here), save (`finetune.save`).

Exit codes: 0 done, 2 the spec, data or base model is unusable, 3 the loss diverged, 4 stopped
by SIGTERM (cancel or preemption) after writing a checkpoint. Note that `accelerate launch`
reports any failure of its workers as 1; the reason is on stderr. A run started again in the
same work directory resumes from the newest complete checkpoint.
"""

from __future__ import annotations

import math
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import torch
from accelerate import Accelerator
from pydantic import ValidationError
from torch.utils.data import DataLoader

from finetune import checkpoint
from finetune.base_model import BaseModelError
from finetune.build import QLoRAUnavailableError, Setup, StartingAdapterError, build
from finetune.choice_accuracy import ChoiceTaskError, accuracy
from finetune.data import DataValidationError, TokenizerUnfitError, real_tokens
from finetune.early_stopping import EarlyStopping, Validation
from finetune.save import Outcome, save
from stagefiles.jobspec import (
    PROGRESS_LOG,
    FailureKind,
    ProgressLine,
    TrainingSpec,
    record_failure,
)

EXIT_BAD_INPUT = 2
EXIT_DIVERGED = 3
EXIT_STOPPED = 4


class NonFiniteLossError(RuntimeError):
    """The loss or the gradient norm became NaN, infinite or explosive; more steps would only
    train on garbage."""


class Stopped(Exception):
    """SIGTERM arrived; a checkpoint holds the run so far."""


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
        acc.is_main_process, train_cfg.early_stopping_metric)
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
            validation = _validate(setup, progress, step)
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
        final = _validate(setup, progress, step)
        return Outcome(step, loss, tokens, final and final.loss, throughput)
    if not stopped_early:  # the last step may be the best one
        final = _validate(setup, progress, step)
        if final is not None:
            stopper.should_stop(final, step, acc.unwrap_model(model))
    best_step = stopper.restore(acc.unwrap_model(model))
    chosen = stopper.chosen
    if acc.is_main_process and chosen is not None:
        print(f"finetune: {'stopped early at' if stopped_early else 'ran to'} step {step}; "
              f"keeping the adapter of step {best_step}, the best by "
              f"{train_cfg.early_stopping_metric} ({chosen.describe()})", file=sys.stderr)
    return Outcome(step, loss, tokens, chosen and chosen.loss, throughput, best_step,
                   stopped_early, chosen and chosen.accuracy)


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


def _validate(setup: Setup, progress: Path, step: int) -> Validation | None:
    """Validation loss, and the gate task's accuracy where it picks the kept step, appended
    to the progress log as a `validation` line."""
    loss = validation_loss(setup)
    if loss is None:
        return None
    recipe = setup.spec.recipe
    validation = Validation(loss, accuracy(
        setup.accelerator, setup.accelerator.unwrap_model(setup.model), setup.questions,
        normalise=recipe.gate.metric == "acc_norm") if setup.questions else None)
    if setup.accelerator.is_main_process:
        line = ProgressLine(stage="validation", step=step, total_steps=recipe.train.max_steps,
                            loss=loss, accuracy=validation.accuracy)
        with open(progress, "a") as fh:
            fh.write(line.model_dump_json() + "\n")
    return validation


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
            QLoRAUnavailableError, StartingAdapterError, ChoiceTaskError) as exc:
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
