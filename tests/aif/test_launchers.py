import os
import sys
import time
from pathlib import Path

import pytest

from aif.launchers import StageCommand, get_launcher


def test_training_runs_under_accelerate_with_every_core_used() -> None:
    argv = StageCommand("finetune.train", Path("/j/spec.json"), num_processes=2).argv()
    assert argv[:3] == [sys.executable, "-m", "accelerate.commands.launch"]
    assert argv[argv.index("--num_processes") + 1] == "2"
    threads = int(argv[argv.index("--num_cpu_threads_per_process") + 1])
    assert threads == max(1, (os.cpu_count() or 1) // 2)
    assert argv[-3:] == ["-m", "finetune.train", "/j/spec.json"]


def test_local_launcher_reports_exit_code_and_log(tmp_path: Path) -> None:
    spec = tmp_path / "spec.json"
    spec.write_text("{}")
    run = get_launcher("local").start(
        StageCommand("json.tool", spec, distributed=False), tmp_path / "run.log")
    while run.poll() is None:
        time.sleep(0.05)
    assert run.poll() == 0
    assert "{}" in run.log_tail()


def test_unknown_launcher_suggests_one() -> None:
    with pytest.raises(ValueError, match="Did you mean 'local'"):
        get_launcher("locale")
