"""Running one stage process for a job: start or re-attach, watch, relay progress, classify.

The worker never trains, evaluates or reads training data itself: each stage is a process
started through the launcher. While it runs, the job's lease is renewed and its progress
lines are relayed as `job.progress` events through the outbox, with the relayed position
stored on the job, so a re-adopted job neither re-sends nor loses a progress event. How a
run ended decides the error class: the stage's own StageFailure when it wrote one, else its
exit code.

A run may serve several jobs (an evaluation of several adapters, see `batches`): the
companions' leases are renewed and their own progress files relayed as well; a companion
cancelled meanwhile drops out and the run goes on for the others.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

from sqlalchemy.orm import Session, sessionmaker

from aif.db.models import Job
from aif.jobstore.outbox import enqueue_event
from aif.launchers import LOST, Launcher, RunHandle, StageCommand, get_launcher, stop
from aif.orchestrator.errors import FinalStageFailure, LeaseLost, StageRunFailed
from aif.orchestrator.leases import Leases
from aif.settings import Settings
from aif.stages import FINAL_EXIT_CODES, R, Stage
from events.messages import JobProgress
from events.states import JobState
from stagefiles.jobspec import FailureKind, ProgressLine, StageFailure

log = logging.getLogger(__name__)

POLL_S = 0.5


class StageRunner:
    def __init__(self, settings: Settings, sessions: sessionmaker[Session], leases: Leases,
                 launcher: Launcher, stopping: threading.Event) -> None:
        self.settings, self.sessions, self.leases, self.launcher = (
            settings, sessions, leases, launcher)
        self.stopping = stopping

    def run_stage(self, job: Job, expected: JobState, stage: Stage, spec_path: Path,
                  num_processes: int = 1, progress_dir: Path | None = None,
                  time_limit_s: float | None = None,
                  companions: dict[str, Path] | None = None) -> None:
        """`run` for a stage of the table: its log beside the spec, its progress file in
        `progress_dir` (default: beside the spec too)."""
        self.run(job, expected, stage.command(spec_path, num_processes),
                 spec_path.parent / stage.log_file,
                 (progress_dir or spec_path.parent) / stage.progress_file,
                 time_limit_s, companions)

    def run(self, job: Job, expected: JobState, command: StageCommand, log_path: Path,
            progress: Path, time_limit_s: float | None = None,
            companions: dict[str, Path] | None = None) -> None:
        """Attach to the run a previous worker started, or start it; return once it succeeded.

        A job re-adopted after its orchestrator was killed thus never runs a stage twice: the
        first run is still going (or finished and left its exit code) and is watched instead.
        `companions` (job id -> its progress file) are the other jobs a started run serves;
        those that dropped out (cancelled, lease taken) are removed from it.
        """
        companions = {} if companions is None else companions
        run: RunHandle | None = None
        ref = job.run_ref
        if ref and ref.get("module") == command.module:
            run = get_launcher(ref["launcher"], self.settings).attach(ref)
            if run.poll() == LOST:
                log.warning("job %s: %s run vanished; starting it again", job.id, command.module)
                run = None
        if run is None:
            StageFailure.path_for(command.spec_path).unlink(missing_ok=True)
            run = self.launcher.start(command, log_path)
            ref = {**run.ref, "started_at": time.time()}
            try:
                self._record_run(job.id, ref, companions)
            except LeaseLost:  # cancelled or erased meanwhile: leave no stage running
                stop(run)
                raise
        assert ref is not None
        started_at = float(ref.get("started_at", time.time()))
        code = self._watch(job, expected, run, progress, started_at, time_limit_s, command,
                           companions)
        if code != 0:
            raise _classify(command, code, log_path)

    def _record_run(self, job_id: str, ref: dict, companions: dict[str, Path]) -> None:
        with self.sessions() as session:
            self.leases.owned(session, job_id).run_ref = (
                {**ref, "companions": sorted(companions)} if companions else ref)
            session.commit()
        for companion in list(companions):
            try:
                with self.sessions() as session:
                    self.leases.owned(session, companion).run_ref = {**ref, "leader": job_id}
                    session.commit()
            except LeaseLost:
                self._drop(companions, companion)

    def _watch(self, job: Job, expected: JobState, run: RunHandle, progress: Path,
               started_at: float, time_limit_s: float | None, command: StageCommand,
               companions: dict[str, Path]) -> int:
        """Wait for the run, relaying progress lines and renewing the leases."""
        last_beat = 0.0
        while (code := run.poll()) is None:
            self.relay_progress(job.id, progress)
            self._relay_companions(companions)
            if time.monotonic() - last_beat > self.settings.lease_s / 4:
                try:
                    self.leases.heartbeat(job.id, expected)
                except LeaseLost:
                    stop(run)  # cancelled: the job's scratch is removed once the stage is gone
                    raise
                for companion in list(companions):
                    try:
                        self.leases.heartbeat(companion, expected)
                    except LeaseLost:
                        self._drop(companions, companion)
                last_beat = time.monotonic()
            if time_limit_s is not None and time.time() - started_at > time_limit_s:
                run.terminate()
                raise FinalStageFailure(
                    f"{command.module} ran longer than its limit of {time_limit_s:g} s")
            if self.stopping.wait(POLL_S):
                run.terminate()
                raise LeaseLost(f"worker stopping; job {job.id} will be re-adopted")
        self.relay_progress(job.id, progress)
        self._relay_companions(companions)
        return code

    def _relay_companions(self, companions: dict[str, Path]) -> None:
        for companion, progress in list(companions.items()):
            try:
                self.relay_progress(companion, progress)
            except LeaseLost:
                self._drop(companions, companion)

    @staticmethod
    def _drop(companions: dict[str, Path], job_id: str) -> None:
        """A companion cancelled or taken over: the run goes on for the others."""
        del companions[job_id]
        log.info("job %s left its shared run (cancelled or taken over)", job_id)

    def relay_progress(self, job_id: str, progress: Path) -> None:
        """Turn the complete new lines of a progress file into outbox events, in the same
        transaction that advances the job's stored position in that file."""
        if not progress.exists():
            return
        with self.sessions() as session:
            job = self.leases.owned(session, job_id)
            key = progress.name if job.work_dir is None else str(
                progress.relative_to(job.work_dir))
            offsets = dict(job.progress_offsets or {})
            offset = start = offsets.get(key, 0)
            with progress.open("rb") as f:
                f.seek(offset)
                for raw in f:
                    if not raw.endswith(b"\n"):
                        break  # the stage is still writing this line
                    line = ProgressLine.model_validate_json(raw)
                    data = JobProgress(job_id=job.id, **line.model_dump())
                    enqueue_event(session, self.settings.topics.status, data, job=job,
                                  event_id=f"{job.id}:progress:{key}:{offset}")
                    offset += len(raw)
            if offset != start:
                job.progress_offsets = {**offsets, key: offset}
                session.commit()


def _classify(command: StageCommand, code: int, log_path: Path) -> Exception:
    failure = StageFailure.find(command.spec_path)
    if failure is not None:
        if failure.kind is FailureKind.final:
            return FinalStageFailure(failure.reason)
        return StageRunFailed(failure.reason)
    if code == LOST:
        return StageRunFailed(f"{command.module} vanished without an exit status")
    where = f"{command.module} exited with code {code} (its log: {log_path.name})"
    return FinalStageFailure(where) if code in FINAL_EXIT_CODES else StageRunFailed(where)


def read_result(stage: Stage[R], folder: Path) -> R:
    """A stage's result file in `folder`; missing or torn means the stage must run again."""
    path = folder / stage.result_file
    try:
        return stage.result.read(path)
    except (OSError, ValueError) as exc:
        raise StageRunFailed(f"{path.name} unreadable: {type(exc).__name__}") from exc
