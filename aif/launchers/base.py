"""What every launcher offers: start a stage command, poll it, stop it."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

LOST = -1000
"""poll() result for a run that vanished without an exit status (its node or wrapper died)."""


@dataclass(frozen=True)
class StageCommand:
    """A stage entrypoint (`python -m <module> <spec>`), optionally under `accelerate launch`."""

    module: str
    spec_path: Path
    num_processes: int = 1
    distributed: bool = True

    def argv(self, python: str = sys.executable) -> list[str]:
        if not self.distributed:
            return [python, "-m", self.module, str(self.spec_path)]
        threads = max(1, (os.cpu_count() or 1) // self.num_processes)
        return [
            python, "-m", "accelerate.commands.launch",
            "--num_processes", str(self.num_processes),
            # accelerate defaults to one thread per process, leaving CPU cores idle.
            "--num_cpu_threads_per_process", str(threads),
            "--num_machines", "1",
            "--mixed_precision", "no",
            "--dynamo_backend", "no",
            "-m", self.module, str(self.spec_path),
        ]


class RunHandle(Protocol):
    ref: dict[str, Any]
    """JSON-able handle stored with the job, so another orchestrator can attach to the run."""

    def poll(self) -> int | None:
        """Exit code once finished (LOST if it vanished), else None."""

    def terminate(self) -> None:
        """Ask the run to stop (SIGTERM: it checkpoints, then exits)."""

    def log_tail(self, lines: int = 20) -> str:
        """The end of the run's combined output, for failure reasons."""


class Launcher(Protocol):
    name: str

    def start(self, command: StageCommand, log_path: Path) -> RunHandle: ...

    def attach(self, ref: dict[str, Any]) -> RunHandle: ...
