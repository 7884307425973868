"""What every launcher offers: start a stage command, poll it, stop it."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from aif.storage import DATASETS_CACHE

LOST = -1000
"""poll() result for a run that vanished without an exit status (its node or wrapper died)."""


@dataclass(frozen=True)
class StageCommand:
    """A stage entrypoint (`python -m <module> <spec>`), optionally under `accelerate launch`."""

    module: str
    spec_path: Path
    num_processes: int = 1
    distributed: bool = True

    def env(self) -> dict[str, str]:
        """Environment of the stage beyond the service's own: the datasets cache inside the
        job's folder, so hub data one tenant's job loads is never where another's reads."""
        return {"HF_DATASETS_CACHE": str(self.spec_path.parent / DATASETS_CACHE)}

    def argv(self, python: str = sys.executable, *, num_processes: int | None = None,
             num_machines: int = 1, machine_rank: str = "0", main_address: str | None = None,
             main_port: int | None = None) -> list[str]:
        """The command line on one machine; a multi-node launcher passes the rank and the
        main address (shell variables such as `$SLURM_NODEID` are left for the node)."""
        if not self.distributed:
            return [python, "-m", self.module, str(self.spec_path)]
        total = num_processes or self.num_processes
        argv = [
            python, "-m", "accelerate.commands.launch",
            "--num_processes", str(total),
            "--num_machines", str(num_machines),
            "--mixed_precision", "no",
            "--dynamo_backend", "no",
        ]  # fmt: skip
        if total > 1:
            # accelerate's name for its torchrun launcher; without it, `--num_processes N`
            # starts one process. The stage picks gloo itself where the node has no GPU.
            argv.append("--multi_gpu")
        if num_machines > 1:
            argv += ["--machine_rank", machine_rank, "--main_process_ip", str(main_address),
                     "--main_process_port", str(main_port)]
        return [*argv, "-m", self.module, str(self.spec_path)]


class RecordedRun:
    """What local and Slurm runs share: the wrapper around the stage writes its exit code to
    `exit_file` and its output to `log`, so any orchestrator can read both later."""

    def __init__(self, ref: dict[str, Any]) -> None:
        self.ref = ref
        self.exit_file, self.log_path = Path(ref["exit_file"]), Path(ref["log"])

    def _exit_code(self) -> int | None:
        try:
            text = self.exit_file.read_text().strip()
        except FileNotFoundError:
            return None
        return int(text) if text else None

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return ""


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

    @property
    def max_processes(self) -> int | None:
        """The most processes one stage run can get here (None: no known limit); a request
        asking for more is refused at intake instead of waiting for resources forever."""

    def start(self, command: StageCommand, log_path: Path) -> RunHandle: ...

    def attach(self, ref: dict[str, Any]) -> RunHandle: ...
