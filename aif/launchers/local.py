"""Local launcher: the stage runs as a child process group on this machine."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

from aif.launchers.base import StageCommand


class LocalRun:
    def __init__(self, proc: subprocess.Popen[bytes], log_path: Path) -> None:
        self.proc, self.log_path = proc, log_path

    def poll(self) -> int | None:
        return self.proc.poll()

    def terminate(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return ""


class LocalLauncher:
    def start(self, command: StageCommand, log_path: Path) -> LocalRun:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with log_path.open("ab") as log:
            proc = subprocess.Popen(
                command.argv(),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # own process group: SIGTERM reaches every rank
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        return LocalRun(proc, log_path)
