"""Crash points for fault-injection tests: a real `kill -9` at an exact place in the code.

`AIF_FAILPOINTS=checkpoint.before_rename` makes the process SIGKILL itself when it reaches
`failpoint("checkpoint.before_rename")`. Unset in production, where each call is one dict
lookup. Here, not in `aif`, because stage processes (`finetune`, `evaluation`) must not
import the service; they inherit the variable from the orchestrator that launches them.
"""

from __future__ import annotations

import os
import signal


def failpoint(name: str) -> None:
    if name in os.environ.get("AIF_FAILPOINTS", "").split(","):
        os.kill(os.getpid(), signal.SIGKILL)
