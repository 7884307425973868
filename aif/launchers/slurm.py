"""Slurm launcher: one generated batch script per stage run, submitted with `sbatch`.

`srun` starts one task per node; each task runs `accelerate launch` with the machine rank
and main address taken from the Slurm environment, so the same stage command scales from one
CPU node to many GPU nodes. The batch script records the stage's exit code in a file beside
the log, because sites without accounting (no `sacct`) forget finished jobs after a few
minutes; `scontrol show job` covers the time before that file exists.
"""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field

from aif.launchers.base import LOST, Launcher, RecordedRun, StageCommand
from aif.storage import PRIVATE_UMASK

if TYPE_CHECKING:
    from aif.settings import Settings

ACTIVE = {"PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "SUSPENDED", "REQUEUED",
          "RESIZING", "SIGNALING", "STAGE_OUT"}


class SlurmError(RuntimeError):
    """A Slurm command failed; the message carries its stderr."""


class SlurmConfig(BaseModel):
    """Resources per stage run; from configuration (`AIF_SLURM__*`), never from code."""

    model_config = ConfigDict(extra="forbid")

    partition: str | None = None
    nodes: int = Field(1, ge=1, le=1024)
    gpus_per_node: int = Field(0, ge=0, le=16, description="0 runs on CPUs.")
    cpus_per_task: int | None = Field(None, ge=1)
    time_limit: str | None = Field(None, description="sbatch --time, e.g. 04:00:00.")
    main_port: int = Field(29500, ge=1024, le=65535)
    preempt_signal_s: int = Field(
        120, ge=0, description="SIGTERM the stage this long before the time limit (checkpoint)."
    )
    extra_args: list[str] = Field(default_factory=list, description="More sbatch options.")

    def processes(self, requested: int) -> int:
        """Processes a distributed stage run gets: on every node one per GPU, or as many as
        requested if that is more."""
        return self.nodes * max(self.gpus_per_node, requested)


def _run(argv: list[str]) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    if done.returncode != 0:
        raise SlurmError(f"{' '.join(argv)} failed ({done.returncode}): {done.stderr.strip()}")
    return done.stdout


def batch_script(command: StageCommand, config: SlurmConfig, log_path: Path,
                 exit_file: Path, python: str = sys.executable) -> str:
    """The sbatch script for one stage run."""
    directives = [
        f"--job-name=aif-{command.module.split('.')[0]}",
        f"--output={log_path}",
        f"--nodes={config.nodes}",
        "--ntasks-per-node=1",
        "--export=ALL",
    ]
    if config.partition:
        directives.append(f"--partition={config.partition}")
    if config.gpus_per_node:
        directives.append(f"--gpus-per-node={config.gpus_per_node}")
    if config.cpus_per_task:
        directives.append(f"--cpus-per-task={config.cpus_per_task}")
    if config.time_limit:
        directives.append(f"--time={config.time_limit}")
        if config.preempt_signal_s:
            directives.append(f"--signal=TERM@{config.preempt_signal_s}")
    directives += config.extra_args
    if command.distributed:
        argv = command.argv(python, num_processes=config.processes(command.num_processes),
                            num_machines=config.nodes, machine_rank="$SLURM_NODEID",
                            main_address="$MAIN_ADDRESS", main_port=config.main_port)
    else:
        argv = command.argv(python)
    # Quote everything except the Slurm variables, which each task expands on its own node.
    task = " ".join(a if a.startswith("$") else shlex.quote(a) for a in argv)
    lines = ["#!/bin/bash", *(f"#SBATCH {d}" for d in directives), "",
             "trap : TERM  # scancel --full signals this shell too: live on to record the code",
             f"umask {PRIVATE_UMASK:03o}  # what the stage writes is the service user's only",
             "export PYTHONUNBUFFERED=1",
             *(f"export {name}={shlex.quote(value)}" for name, value in command.env().items()),
             'export MAIN_ADDRESS=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n1)',
             f"srun --kill-on-bad-exit=1 bash -c {shlex.quote(task)}",
             f"echo $? > {shlex.quote(str(exit_file))}", ""]
    return "\n".join(lines)


def _job_fields(job_id: str) -> dict[str, str] | None:
    """`scontrol show job -o` as a dict; None once Slurm has forgotten the job."""
    done = subprocess.run(["scontrol", "show", "job", "-o", job_id], capture_output=True,
                          text=True, timeout=60)
    if done.returncode != 0:
        if "Invalid job id" in done.stderr:
            return None
        raise SlurmError(f"scontrol show job {job_id} failed: {done.stderr.strip()}")
    return dict(f.split("=", 1) for f in done.stdout.split() if "=" in f)


class SlurmRun(RecordedRun):
    def poll(self) -> int | None:
        if (code := self._exit_code()) is not None:
            return code
        fields = _job_fields(self.ref["job_id"])
        if fields is None:
            return self._exit_code() if self.exit_file.exists() else LOST
        if fields.get("JobState") in ACTIVE:
            return None
        # Ended without the script recording a code: cancelled, timed out or its node failed.
        if (code := self._exit_code()) is not None:
            return code
        status, _, signal = fields.get("ExitCode", "0:0").partition(":")
        if int(signal or 0):
            return 128 + int(signal)
        return int(status) if int(status) else LOST

    def terminate(self) -> None:
        """SIGTERM to the running step only: the stage checkpoints and exits, and the batch
        script, left alone, records how it ended."""
        if self.poll() is None:
            _run(["scancel", "--signal=TERM", self.ref["job_id"]])


class SlurmLauncher(Launcher):
    name = "slurm"

    def __init__(self, config: SlurmConfig | None = None) -> None:
        self.config = config or SlurmConfig()

    @classmethod
    def from_settings(cls, settings: Settings | None) -> SlurmLauncher:
        return cls(settings.slurm if settings else None)

    @property
    def max_processes(self) -> int | None:
        """One process per GPU on GPU nodes; on CPU nodes the site's limit is not known."""
        c = self.config
        return c.nodes * c.gpus_per_node if c.gpus_per_node else None

    def processes(self, requested: int) -> int:
        return self.config.processes(requested)

    def submit(self, command: StageCommand, ref: dict[str, Any]) -> SlurmRun:
        log_path = Path(ref["log"])
        script = log_path.with_suffix(".sbatch")
        script.write_text(batch_script(command, self.config, log_path, Path(ref["exit_file"])))
        job_id = _run(["sbatch", "--parsable", f"--chdir={log_path.parent}", str(script)])
        return SlurmRun({**ref, "job_id": job_id.strip().split(";")[0], "script": str(script)})

    def attach(self, ref: dict[str, Any]) -> SlurmRun:
        return SlurmRun(ref)
