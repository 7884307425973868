"""A stage that only waits: `python -m sleep_stage SPEC` writes into the job's folder, as a
real stage would, and runs until it is stopped. For tests of stopping a running stage."""

from __future__ import annotations

import sys
import time
from pathlib import Path

if __name__ == "__main__":
    work = Path(sys.argv[1]).parent
    (work / "checkpoints").mkdir(exist_ok=True)
    (work / "checkpoints" / "partial.bin").write_bytes(b"weights so far")
    while True:
        time.sleep(0.1)
