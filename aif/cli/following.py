"""How `aif submit --wait` and `aif demo` follow a job: state changes as lines, training
as a bar (or as lines where the output is no terminal), and the outcome."""

from __future__ import annotations

import math
import time
from collections.abc import Callable

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from aif.cli.common import _api_key, console
from aif.follow import wait_for_job
from aif.settings import Settings
from aif.web import client as api_client
from events.messages import (
    EvaluationCompleted,
    EventData,
    JobProgress,
    JobStatusChanged,
    ModelReady,
)
from events.states import JobState


def _follow(settings: Settings, tenant: str, job_id: str, api: str | None = None
            ) -> tuple[JobState, list[EventData]]:
    """Show transitions as lines and training as a bar; return the final state and events.
    From the tenant's topics on the bus, or with `api` from the job's HTTP event stream.
    Where the output is no terminal (`make demo | tee log`) a live bar shows nothing until it
    ends, so progress comes as lines there (`ProgressLines`)."""
    def watch_with(show: Callable[[EventData], None]) -> tuple[JobState, list[EventData]]:
        watch = (api_client.follow(api, _api_key(), job_id, show) if api else
                 wait_for_job(settings.kafka, settings.topics, tenant, job_id, show))
        assert watch.final is not None  # wait_for_job returns only after the final status
        return watch.final, watch.events

    if not console.is_terminal:
        return watch_with(ProgressLines(console).show)
    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[info]}"),
                  TimeElapsedColumn(), console=console) as progress:
        bar = progress.add_task("waiting for the orchestrator", total=None, info="")

        def show(ev: EventData) -> None:
            if isinstance(ev, JobStatusChanged):
                progress.console.print(_status_line(ev))
                progress.update(bar, description=str(ev.state))
            elif isinstance(ev, JobProgress):
                progress.update(bar, description=ev.stage, total=ev.total_steps,
                                completed=ev.step, info=_progress_info(ev))

        return watch_with(show)


def _status_line(ev: JobStatusChanged) -> Text:
    """A state change as one line; the reason is the service's text, never markup."""
    return Text.assemble((str(ev.state), "bold"), f"  {ev.reason}")


PROGRESS_LINE_S = 30.0
"""At most one progress line this often, when the output is no terminal."""


class ProgressLines:
    """What `_follow` shows where the output is no terminal: each state change, and progress
    as lines, flushed as they come: one when a stage starts, one when it reaches its last
    step, and at most one every `every_s` seconds in between."""

    def __init__(self, out: Console, every_s: float = PROGRESS_LINE_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.out, self.every_s, self.clock = out, every_s, clock
        self.stage: str | None = None
        self.last = -math.inf

    def show(self, ev: EventData) -> None:
        if isinstance(ev, JobStatusChanged):
            self.out.print(_status_line(ev))
        elif isinstance(ev, JobProgress):
            now = self.clock()
            if (ev.stage != self.stage or ev.step >= ev.total_steps
                    or now - self.last >= self.every_s):
                self.stage, self.last = ev.stage, now
                self.out.print(f"{ev.stage}  {_progress_info(ev)}", markup=False,
                               highlight=False)


def _progress_info(ev: JobProgress) -> str:
    info = f"step {ev.step}/{ev.total_steps}"
    if ev.loss is not None:
        info += f"  loss {ev.loss:.3f}"
    if ev.tokens_per_s:
        info += f"  {ev.tokens_per_s:.0f} tok/s"
    if ev.eta_s is not None:
        info += f"  eta {ev.eta_s:.0f}s"
    return info


def _print_outcome(final: JobState, events: list[EventData]) -> None:
    evaluated = next((e for e in events if isinstance(e, EvaluationCompleted)), None)
    if evaluated:
        table = Table(title="base vs tuned")
        for col in ("task", "metric", "base", "tuned", "delta"):
            table.add_column(col, justify="right" if col in ("base", "tuned", "delta") else "left")
        for s in evaluated.scores:
            table.add_row(s.task, s.metric, f"{s.base:.3f}", f"{s.tuned:.3f}", f"{s.delta:+.3f}")
        console.print(table)
        verdict = "passed" if evaluated.gate.passed else "failed"
        # The gate's reason is the reason of the state change it made, shown as it came.
        told = next((e.state for e in events if isinstance(e, JobStatusChanged)
                     and e.reason == evaluated.gate.reason), None)
        console.print(f"gate: {verdict} (the reason is on the {told} line above)" if told else
                      f"gate: {verdict} - {evaluated.gate.reason}", markup=False)
    ready = next((e for e in events if isinstance(e, ModelReady)), None)
    if ready:
        console.print(f"model ready: {ready.adapter_uri}", markup=False)
    console.print(Text.assemble("job finished: ", (str(final), "bold")))
