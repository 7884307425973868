"""Follow one job's events on the bus, as a partner's client would, and tell when it is over."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass, field

from events.bus import KafkaConfig
from events.client import answers, follow
from events.envelope import CloudEvent
from events.messages import EvaluationCompleted, EventData, JobStatusChanged, ModelReady
from events.states import JobState
from events.topics import Topics

log = logging.getLogger(__name__)

OUTCOME_GRACE_S = 15.0
"""How long to wait, after the final status, for an outcome event that should have come with
it. The outbox publishes the outcome first, so it is normally read within a poll or two."""


def follow_job(
    cfg: KafkaConfig, topics: Topics, tenant: str, job_id: str | None = None, *,
    request: CloudEvent | None = None, timeout_s: float = 3600,
) -> Generator[EventData | None, None, None]:
    """The events of one of `tenant`'s jobs, by our job id (the envelope's `subject`) or by
    the request it serves; see `events.client.follow` for what is yielded."""
    if (job_id is None) == (request is None):
        raise ValueError("give exactly one of job_id or request")
    if request is not None:
        return follow(cfg, topics, tenant, lambda ev: answers(ev, request), timeout_s)
    return follow(cfg, topics, tenant, lambda ev: ev.subject == job_id, timeout_s)


@dataclass
class JobWatch:
    """What a follower has seen of one job, and whether all it will get has arrived.

    Status events and outcome events travel on different topics, so either may be read
    first. A job is over with its final status plus the outcome events its transitions
    promise: `evaluation.completed` when evaluating ended with a gate decision (to
    handing_off or rejected; not when it failed or was cancelled), `model.ready` when it
    succeeded. A job that ends before evaluating is over with its final status.
    """

    events: list[EventData] = field(default_factory=list)
    final: JobState | None = None
    gate_decided: bool = False

    def add(self, event: EventData) -> None:
        self.events.append(event)
        if isinstance(event, JobStatusChanged):
            if event.previous_state is JobState.evaluating and event.state in (
                    JobState.handing_off, JobState.rejected):
                self.gate_decided = True
            if event.state.terminal:
                self.final = event.state

    def missing(self) -> list[type[EventData]]:
        """Outcome events promised so far and not yet seen."""
        promised = [EvaluationCompleted] if self.gate_decided else []
        if self.final is JobState.succeeded:
            promised.append(ModelReady)
        return [t for t in promised if not any(isinstance(e, t) for e in self.events)]

    @property
    def over(self) -> bool:
        return self.final is not None and not self.missing()


def wait_for_job(
    cfg: KafkaConfig, topics: Topics, tenant: str, job_id: str,
    on_event: Callable[[EventData], None] = lambda _: None,
    timeout_s: float = 3600, grace_s: float = OUTCOME_GRACE_S,
) -> JobWatch:
    """Follow the job until it is over (`JobWatch.over`), calling `on_event` for each event.

    Returns as soon as the last expected event is read; an outcome event still missing
    `grace_s` after the final status is given up on (logged), never waited for forever.
    """
    watch = JobWatch()
    give_up_at: float | None = None
    with contextlib.closing(follow_job(cfg, topics, tenant, job_id, timeout_s=timeout_s)) as events:
        for event in events:
            if event is not None:
                watch.add(event)
                on_event(event)
            if watch.over:
                return watch
            if watch.final is not None:
                give_up_at = give_up_at or time.monotonic() + grace_s
                if time.monotonic() > give_up_at:
                    log.warning("job %s ended %s, but %s never arrived", job_id, watch.final,
                                ", ".join(t.TYPE for t in watch.missing()))
                    return watch
    raise RuntimeError("event stream ended")  # follow raises TimeoutError first
