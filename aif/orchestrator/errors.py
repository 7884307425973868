"""The two kinds of failure a job step can end in, and what the worker does with each.

A final error is the request's own fault (its recipe, its data, a gate it did not pass):
running it again cannot help, so the job ends `rejected` (before training) or `failed`.
A retryable error is the infrastructure's (a database, broker or launcher away, a full disk,
a killed node): the job backs off and is tried again, a bounded number of times. Anything a
step raises that is neither counts as retryable, so a bug ends a job after a few attempts
instead of looping on it forever.
"""

from __future__ import annotations


class FinalError(Exception):
    """The request cannot succeed; the message is the job's one-line reason."""


class RetryableError(Exception):
    """The infrastructure failed; another attempt later may succeed."""


class StageRunFailed(RetryableError):
    """A stage process ended badly for a reason that may pass (killed, lost, out of disk).

    The run is over, so the next attempt starts a new one instead of attaching to it.
    """


class FinalStageFailure(FinalError):
    """A stage process refused the job (its data, recipe or model) or the loss diverged."""


class LeaseLost(RuntimeError):
    """Another worker owns the job now, or it was cancelled: stop touching it."""


class Deferred(Exception):
    """The step handed the job back to wait for others (see `batches.should_wait`); it is claimed
    again at its `next_attempt_at`, or earlier as another job's companion."""
