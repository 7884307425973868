"""Early stopping on the validation loss or the gate task's validation accuracy
(`train.early_stopping_patience`, `train.early_stopping_metric`).

A fixed step count is tuned to one data set; on another the model may start to memorise
the training rows long before the last step. Every `eval_steps` the validation figures are
compared with the best so far; after `patience` comparisons without a new best (by more than
`min_delta`) training stops, and the adapter of the best step is the one saved. With
`accuracy` the best is the highest accuracy, and of equal ones the lower loss: accuracy
moves in steps of one row, and at equal accuracy the lower loss is the surer model. The
best adapter and its figures are kept on disk beside the checkpoints, so a run resumed after
a SIGTERM goes on counting from where it was.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import torch
from peft import PeftModel, get_peft_model_state_dict, set_peft_model_state_dict
from safetensors.torch import load_file, save_file

BEST_DIR = "best"


@dataclass(frozen=True)
class Validation:
    """A step's figures on the validation rows; accuracy only where it picks the step."""

    loss: float
    accuracy: float | None = None

    def describe(self) -> str:
        """As reasons name the figure that chose a step."""
        if self.accuracy is None:
            return f"validation loss {self.loss:.4f}"
        return f"validation accuracy {self.accuracy:.3f}; validation loss {self.loss:.4f}"


Metric = Literal["loss", "accuracy"]


def improves(new: Validation, best: Validation | None, metric: Metric,
             min_delta: float) -> bool:
    """Whether `new` is a new best: loss lower by more than min_delta; or accuracy higher by
    more than min_delta, or no lower with the loss lower by more than min_delta."""
    if best is None:
        return True
    lower = new.loss < best.loss - min_delta
    if metric == "loss":
        return lower
    assert new.accuracy is not None and best.accuracy is not None  # scored in this mode
    return new.accuracy > best.accuracy + min_delta or (new.accuracy >= best.accuracy and lower)


def kept(curve: list[tuple[int, Validation]], metric: Metric, patience: int,
         min_delta: float) -> tuple[int, int | None]:
    """The step a run with these validations keeps, and the step it stops at (None: it would
    run past the last one); the same rule as `EarlyStopping`, for figures after the fact."""
    best, best_step, stale = None, curve[0][0], 0
    for step, validation in curve:
        if improves(validation, best, metric, min_delta):
            best, best_step, stale = validation, step, 0
        else:
            stale += 1
            if stale >= patience:
                return best_step, step
    return best_step, None


@dataclass
class Best:
    step: int
    loss: float
    stale: int = 0  # comparisons since the best
    accuracy: float | None = None


class EarlyStopping:
    def __init__(self, work_dir: Path, patience: int, min_delta: float, is_main: bool,
                 metric: Metric = "loss") -> None:
        self.dir, self.patience, self.min_delta, self.is_main, self.metric = (
            work_dir / BEST_DIR, patience, min_delta, is_main, metric)
        state = self.dir / "best.json"
        self.best = Best(**json.loads(state.read_text())) if state.is_file() else None

    def should_stop(self, validation: Validation, step: int, model: PeftModel) -> bool:
        """Record the validation figures of `step` (equal on every rank); True when it is
        time to stop."""
        if improves(validation, self.chosen, self.metric, self.min_delta):
            self.best = Best(step, validation.loss, accuracy=validation.accuracy)
            self._keep(model)
        else:
            self.best.stale += 1
            self._write_state()
        return self.best.stale >= self.patience

    @property
    def chosen(self) -> Validation | None:
        """The kept step's figures."""
        return self.best and Validation(self.best.loss, self.best.accuracy)

    def restore(self, model: PeftModel) -> int | None:
        """Load the best step's adapter into `model` (every rank); the step, or None if no
        validation was recorded."""
        if self.best is None:
            return None
        set_peft_model_state_dict(model, load_file(self.dir / "adapter.safetensors"))
        return self.best.step

    def _keep(self, model: PeftModel) -> None:
        if self.is_main:
            self.dir.mkdir(exist_ok=True)
            weights = {k: v.detach().cpu().contiguous()
                       for k, v in get_peft_model_state_dict(model).items()}
            tmp = self.dir / "adapter.safetensors.tmp"
            save_file(weights, tmp)
            tmp.replace(self.dir / "adapter.safetensors")
            self._write_state()
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.barrier()  # the other ranks restore from this file

    def _write_state(self) -> None:
        if self.is_main and self.best is not None:
            (self.dir / "best.json").write_text(json.dumps(asdict(self.best)))
