"""Launchers start a stage's worker process somewhere and report when it ends.

Chosen by registered name from configuration (`AIF_LAUNCHER`), never by an import path, so a
request cannot make the service import arbitrary code.
"""

from __future__ import annotations

import difflib

from aif.launchers.base import LOST, Launcher, RunHandle, StageCommand
from aif.launchers.local import LocalLauncher
from aif.launchers.slurm import SlurmConfig, SlurmLauncher

LAUNCHERS = ("local", "slurm")


def get_launcher(name: str, slurm: SlurmConfig | None = None) -> Launcher:
    if name not in LAUNCHERS:
        hint = difflib.get_close_matches(name, LAUNCHERS, n=1)
        raise ValueError(
            f"Unknown launcher {name!r}." + (f" Did you mean {hint[0]!r}?" if hint else "")
            + f" Available: {', '.join(sorted(LAUNCHERS))}"
        )
    return SlurmLauncher(slurm) if name == "slurm" else LocalLauncher()


__all__ = ["LAUNCHERS", "LOST", "Launcher", "RunHandle", "SlurmConfig", "StageCommand",
           "get_launcher"]
