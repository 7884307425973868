"""Local launcher: the stage runs as its own process group on this machine.

The stage outlives the orchestrator that started it: a `kill -9` of the orchestrator leaves
training running, and the orchestrator that re-adopts the job attaches to the same run
through its `ref` instead of starting a second one. A small shell wrapper records the exit
code in a file, because only a parent can read a child's exit status.
"""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path
from typing import Any

from aif.launchers.base import LOST, RecordedRun, StageCommand
from aif.storage import PRIVATE_UMASK

# Runs the command with an owner-only umask, then writes its status and exits with it. The
# trap keeps the shell alive on SIGTERM long enough to record how the stage ended; the stage
# still gets the signal. The exit status says the same where the file is gone (an erasure).
WRAPPER = (f'umask {PRIVATE_UMASK:03o}; trap : TERM INT; "$@"; code=$?; '
           'echo $code > "$AIF_EXIT_FILE"; exit $code')


def _start_time(pid: int) -> str | None:
    """Kernel start time of a live (non-zombie) process, to tell it from a reused pid."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    return None if fields[0] in ("Z", "X") else fields[19]


class LocalRun(RecordedRun):
    def __init__(self, ref: dict[str, Any], proc: subprocess.Popen[bytes] | None = None) -> None:
        super().__init__(ref)
        self.proc = proc

    def poll(self) -> int | None:
        if self.proc is not None:
            if self.proc.poll() is None:
                return None
            code = self._exit_code()
            return code if code is not None else self.proc.returncode
        code = self._exit_code()
        if code is not None:
            return code
        return None if _start_time(self.ref["pid"]) == self.ref["started"] else LOST

    def terminate(self) -> None:
        if self.poll() is None:
            os.killpg(self.ref["pid"], signal.SIGTERM)


class LocalLauncher:
    name = "local"

    @property
    def max_processes(self) -> int:
        return len(os.sched_getaffinity(0))

    def start(self, command: StageCommand, log_path: Path) -> LocalRun:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        exit_file = log_path.with_suffix(".exit")
        exit_file.unlink(missing_ok=True)
        with log_path.open("ab") as log:
            proc = subprocess.Popen(
                ["/bin/sh", "-c", WRAPPER, "aif-stage", *command.argv()],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # own process group: SIGTERM reaches every rank
                env={**os.environ, **command.env(), "PYTHONUNBUFFERED": "1",
                     "AIF_EXIT_FILE": str(exit_file)},
            )
        ref = {"launcher": self.name, "module": command.module, "pid": proc.pid,
               "started": _start_time(proc.pid), "exit_file": str(exit_file),
               "log": str(log_path)}
        return LocalRun(ref, proc)

    def attach(self, ref: dict[str, Any]) -> LocalRun:
        return LocalRun(ref)
