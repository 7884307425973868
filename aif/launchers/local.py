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

from aif.launchers.base import LOST, WRAPPER, Launcher, RecordedRun, StageCommand


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


class LocalLauncher(Launcher):
    name = "local"

    @property
    def max_processes(self) -> int:
        return len(os.sched_getaffinity(0))

    def submit(self, command: StageCommand, ref: dict[str, Any]) -> LocalRun:
        with Path(ref["log"]).open("ab") as log:
            proc = subprocess.Popen(
                ["/bin/sh", "-c", WRAPPER, "aif-stage", *command.argv()],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # own process group: SIGTERM reaches every rank
                env={**os.environ, **command.env(), "PYTHONUNBUFFERED": "1",
                     "AIF_EXIT_FILE": ref["exit_file"]},
            )
        return LocalRun({**ref, "pid": proc.pid, "started": _start_time(proc.pid)}, proc)

    def attach(self, ref: dict[str, Any]) -> LocalRun:
        return LocalRun(ref)
