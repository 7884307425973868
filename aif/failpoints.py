"""Crash points for fault-injection tests: a real `kill -9` at an exact place in the code.

`AIF_FAILPOINTS=intake.after_store` makes the process SIGKILL itself when it reaches
`failpoint("intake.after_store")`. Unset in production, where each call is one dict lookup.
"""

from __future__ import annotations

import os
import signal


def failpoint(name: str) -> None:
    if name in os.environ.get("AIF_FAILPOINTS", "").split(","):
        os.kill(os.getpid(), signal.SIGKILL)
