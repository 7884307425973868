"""The seeded chaos run (`benchmarks.chaos`), every kind of fault once, as a slow test.

It runs as its own process, as an operator would run it, because it mounts a tmpfs and
restarts a private PostgreSQL cluster of its own: both need root.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.chaos import FAULTS

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_seeded_chaos_loses_nothing_and_doubles_nothing(tiny_model_dir: Path,
                                                        tmp_path: Path) -> None:
    if os.geteuid() != 0 or shutil.which("pg_createcluster") is None:
        pytest.skip("the chaos run needs root and PostgreSQL (tmpfs mount, private cluster)")
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.chaos", "--seed", "7", "--faults", str(len(FAULTS)),
         "--deadline-min", "15", "--model", str(tiny_model_dir), "--workdir", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=20 * 60,
    )
    print(done.stdout)
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-3000:]
    assert "| lost | 0 |" in done.stdout and "| doubled | 0 |" in done.stdout
    assert f"| faults injected | {len(FAULTS)} of {len(FAULTS)} |" in done.stdout
