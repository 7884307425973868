"""Early stopping on the validation loss (`train.early_stopping_patience`).

A fixed step count is tuned to one data set; on another the model may start to memorise
the training rows long before the last step. Every `eval_steps` the validation loss is
compared with the best so far; after `patience` comparisons without a new best (lower by at
least `min_delta`) training stops, and the adapter of the best step is the one saved. The
best adapter and its loss are kept on disk beside the checkpoints, so a run resumed after a
SIGTERM goes on counting from where it was.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from peft import PeftModel, get_peft_model_state_dict, set_peft_model_state_dict
from safetensors.torch import load_file, save_file

BEST_DIR = "best"


@dataclass
class Best:
    step: int
    loss: float
    stale: int = 0  # comparisons since the best


class EarlyStopping:
    def __init__(self, work_dir: Path, patience: int, min_delta: float, is_main: bool) -> None:
        self.dir, self.patience, self.min_delta, self.is_main = (
            work_dir / BEST_DIR, patience, min_delta, is_main)
        state = self.dir / "best.json"
        self.best = Best(**json.loads(state.read_text())) if state.is_file() else None

    def should_stop(self, loss: float, step: int, model: PeftModel) -> bool:
        """Record the validation loss of `step` (equal on every rank); True when it is time
        to stop."""
        if self.best is None or loss < self.best.loss - self.min_delta:
            self.best = Best(step, loss)
            self._keep(model)
        else:
            self.best.stale += 1
            self._write_state()
        return self.best.stale >= self.patience

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
