"""Launchers start a stage's worker process somewhere and report when it ends.

Chosen by registered name from configuration (`AIF_LAUNCHER`), never by an import path, so a
request cannot make the service import arbitrary code. A new launcher is one module with a
`Launcher` subclass and one entry in `LAUNCHERS`.
"""

from __future__ import annotations

import difflib
from typing import TYPE_CHECKING

from aif.launchers.base import LOST, Launcher, RunHandle, StageCommand, stop
from aif.launchers.kubernetes import KubernetesConfig, KubernetesLauncher
from aif.launchers.local import LocalLauncher
from aif.launchers.slurm import SlurmConfig, SlurmLauncher

if TYPE_CHECKING:
    from aif.settings import Settings

LAUNCHERS: dict[str, type[Launcher]] = {
    cls.name: cls for cls in (LocalLauncher, SlurmLauncher, KubernetesLauncher)
}


def check_launcher_name(name: str) -> str:
    """`name` if a launcher is registered under it, else a ValueError with the closest."""
    if name not in LAUNCHERS:
        hint = difflib.get_close_matches(name, LAUNCHERS, n=1)
        raise ValueError(
            f"Unknown launcher {name!r}." + (f" Did you mean {hint[0]!r}?" if hint else "")
            + f" Available: {', '.join(sorted(LAUNCHERS))}"
        )
    return name


def get_launcher(name: str, settings: Settings | None = None) -> Launcher:
    """The launcher registered as `name`, configured by `settings` (None: its defaults)."""
    return LAUNCHERS[check_launcher_name(name)].from_settings(settings)


__all__ = ["LAUNCHERS", "LOST", "KubernetesConfig", "Launcher", "RunHandle", "SlurmConfig",
           "StageCommand", "check_launcher_name", "get_launcher", "stop"]
