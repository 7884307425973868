"""Resumable training checkpoints, written so that a kill at any moment leaves a usable one.

A checkpoint is written into a temporary directory, completed with a marker file and only
then renamed to `checkpoints/step-NNNNNNN`; a directory without the marker is never read. It
holds what a LoRA run needs and nothing more: the adapter weights (safetensors), the
optimizer and scheduler states, torch's RNG state (dropout; the data order comes from the
epoch-seeded sampler) and the step counters. Torch objects are
loaded with `weights_only=True`, so a checkpoint cannot run code.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from peft import PeftModel, set_peft_model_state_dict
from safetensors.torch import load_file

from stagefiles.failpoints import failpoint

CHECKPOINTS_DIR = "checkpoints"
COMPLETE = "COMPLETE"
KEEP = 2


@dataclass(frozen=True)
class Counters:
    step: int
    micro_batches: int
    tokens: int
    loss: float


def save(root: Path, model: PeftModel, optimizer: torch.optim.Optimizer,
         scheduler: torch.optim.lr_scheduler.LRScheduler, counters: Counters) -> Path:
    """Write one complete checkpoint and drop all but the newest `KEEP`; main process only."""
    final = root / CHECKPOINTS_DIR / f"step-{counters.step:07d}"
    tmp = final.with_name(f".{final.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    model.save_pretrained(tmp / "adapter", safe_serialization=True)
    torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "rng": {"torch": torch.get_rng_state()}}, tmp / "state.pt")
    (tmp / "counters.json").write_text(json.dumps(asdict(counters)))
    (tmp / COMPLETE).touch()
    _fsync_dir(tmp)
    failpoint("checkpoint.before_rename")  # complete but not yet visible: must be ignored
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    for old in completed(root)[:-KEEP]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def completed(root: Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    return sorted(p for p in (root / CHECKPOINTS_DIR).glob("step-*") if (p / COMPLETE).is_file())


def load_latest(root: Path, model: PeftModel, optimizer: torch.optim.Optimizer,
                scheduler: torch.optim.lr_scheduler.LRScheduler) -> Counters | None:
    """Restore the newest complete checkpoint into model, optimizer and scheduler."""
    found = completed(root)
    if not found:
        return None
    latest = found[-1]
    weights = load_file(latest / "adapter" / "adapter_model.safetensors")
    result = set_peft_model_state_dict(model, weights)
    if getattr(result, "unexpected_keys", None):
        raise RuntimeError(f"{latest}: checkpoint does not fit the model: "
                           f"{result.unexpected_keys[:3]}")
    state = torch.load(latest / "state.pt", weights_only=True)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["rng"]["torch"])
    return Counters(**json.loads((latest / "counters.json").read_text()))


def _fsync_dir(directory: Path) -> None:
    for path in directory.rglob("*"):
        if path.is_file():
            with path.open("rb") as fh:
                os.fsync(fh.fileno())
