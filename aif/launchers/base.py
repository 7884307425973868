"""What every launcher offers: start a stage command, poll it, stop it."""

from __future__ import annotations

import sys
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, Self

from aif.storage import DATASETS_CACHE, PRIVATE_UMASK

if TYPE_CHECKING:
    from aif.settings import Settings

LOST = -1000
"""poll() result for a run that vanished without an exit status (its node or wrapper died)."""


@dataclass(frozen=True)
class StageCommand:
    """A stage entrypoint (`python -m <module> <spec>`), optionally under `accelerate launch`."""

    module: str
    spec_path: Path
    num_processes: int = 1
    distributed: bool = True

    @property
    def job_id(self) -> str:
        """The job the run belongs to: its spec lies in `<jobs_dir>/<tenant>/<job id>/`
        (aif.storage.jobs_root), so launchers can label and name the run without asking."""
        return self.spec_path.parent.name

    @property
    def tenant(self) -> str:
        return self.spec_path.parent.parent.name

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
        elif total > 1:
            # A free port of the node's, not torchrun's fixed 29500: two jobs' ranks on one
            # node would otherwise meet at the same rendezvous (accelerate checks the port
            # first, but two launches checking together both find it free).
            argv += ["--main_process_port", "0"]
        return [*argv, "-m", self.module, str(self.spec_path)]


WRAPPER = (f'umask {PRIVATE_UMASK:03o}; trap : TERM INT; "$@"; code=$?; '
           'echo $code > "$AIF_EXIT_FILE"; exit $code')
"""Runs the stage with an owner-only umask, then writes its status to `$AIF_EXIT_FILE` and
exits with it. The trap keeps the shell alive on SIGTERM long enough to record how the stage
ended; the stage still gets the signal. The exit status says the same where the file is gone
(an erasure)."""


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


STOP_WAIT_S = 60.0
"""How long a stopped stage may take to exit (training writes a checkpoint on SIGTERM)."""


def stop(run: RunHandle, wait_s: float = STOP_WAIT_S) -> bool:
    """SIGTERM the run and wait for it to end; False if it still runs after `wait_s`."""
    run.terminate()
    deadline = time.monotonic() + wait_s
    while run.poll() is None:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


class Launcher(ABC):
    """Starts stage runs that record their exit code and output in files beside the log
    (`<log>.exit`), so any orchestrator can read both later; subclasses only submit."""

    name: ClassVar[str]

    @classmethod
    def from_settings(cls, settings: Settings | None) -> Self:
        """The launcher configured by the service's settings (None: its defaults)."""
        return cls()

    @property
    def max_processes(self) -> int | None:
        """The most processes one stage run can get here (None: no known limit); a request
        asking for more is refused at intake instead of waiting for resources forever."""
        return None

    def processes(self, requested: int) -> int:
        """Processes a distributed stage run asking for `requested` gets here."""
        return requested

    def start(self, command: StageCommand, log_path: Path) -> RunHandle:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        exit_file = log_path.with_suffix(".exit")
        exit_file.unlink(missing_ok=True)
        ref = {"launcher": self.name, "module": command.module, "exit_file": str(exit_file),
               "log": str(log_path)}
        return self.submit(command, ref)

    @abstractmethod
    def submit(self, command: StageCommand, ref: dict[str, Any]) -> RunHandle:
        """Start the run; `ref` already names its exit file and log, add what attach needs."""

    @abstractmethod
    def attach(self, ref: dict[str, Any]) -> RunHandle:
        """The handle of a run this or another orchestrator started, from its stored ref."""
