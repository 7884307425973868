"""Job states, published in every status event; the orchestrator owns the transition rules."""

from enum import StrEnum


class JobState(StrEnum):
    validating = "validating"
    queued = "queued"
    training = "training"
    evaluating = "evaluating"
    handing_off = "handing_off"
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"
    rejected = "rejected"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL_STATES


TERMINAL_STATES = frozenset(
    {JobState.succeeded, JobState.failed, JobState.cancelled, JobState.rejected}
)
