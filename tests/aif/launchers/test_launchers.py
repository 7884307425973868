import os
import sys
import time
from pathlib import Path

import pytest
from pydantic import ValidationError

from aif.launchers import LAUNCHERS, LOST, Launcher, SlurmConfig, StageCommand, get_launcher
from aif.launchers.slurm import batch_script
from aif.settings import Settings

SLEEPER = """
import json, sys, time
cfg = json.load(open(sys.argv[1]))
print("stage started", flush=True)
time.sleep(cfg["sleep"])
sys.exit(cfg["code"])
"""


@pytest.fixture
def stage(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A stage module that sleeps and exits with a chosen code, found through PYTHONPATH."""
    (tmp_path / "sleeper_stage.py").write_text(SLEEPER)
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))

    def make(sleep: float, code: int) -> StageCommand:
        spec = tmp_path / f"spec-{sleep}-{code}.json"
        spec.write_text(f'{{"sleep": {sleep}, "code": {code}}}')
        return StageCommand("sleeper_stage", spec, distributed=False)

    return make


def _wait(run, timeout: float = 30) -> int:
    deadline = time.monotonic() + timeout
    while (code := run.poll()) is None:
        assert time.monotonic() < deadline, "stage did not end"
        time.sleep(0.05)
    return code


def test_several_processes_use_the_distributed_launcher() -> None:
    argv = StageCommand("finetune.train", Path("/j/spec.json"), num_processes=2).argv()
    assert argv[:3] == [sys.executable, "-m", "accelerate.commands.launch"]
    assert argv[argv.index("--num_processes") + 1] == "2"
    assert "--multi_gpu" in argv  # without it accelerate starts a single process
    # each run its own rendezvous port: two jobs' ranks on one node must never meet
    assert argv[argv.index("--main_process_port") + 1] == "0"
    # Threads are the node's business: the stage divides the cores it is given.
    assert "--num_cpu_threads_per_process" not in argv
    assert argv[-3:] == ["-m", "finetune.train", "/j/spec.json"]
    assert "--multi_gpu" not in StageCommand("finetune.train", Path("/j/s.json")).argv()


@pytest.fixture(params=["local", pytest.param("slurm", marks=pytest.mark.slurm)])
def launcher(request: pytest.FixtureRequest) -> Launcher:
    if request.param == "slurm":
        request.getfixturevalue("slurm_cluster")
    return get_launcher(request.param)


def test_exit_code_and_log_reach_the_starter(launcher: Launcher, stage, tmp_path: Path) -> None:
    run = launcher.start(stage(0, 7), tmp_path / "run.log")
    assert _wait(run) == 7
    assert "stage started" in run.log_tail()


def test_another_orchestrator_attaches_to_a_running_stage(
    launcher: Launcher, stage, tmp_path: Path,
) -> None:
    first = launcher.start(stage(3, 0), tmp_path / "run.log")
    attached = launcher.attach(first.ref)  # as after a kill -9 of the starter
    assert attached.poll() is None
    assert _wait(attached) == 0


def test_terminate_ends_the_stage_with_a_signal_status(
    launcher: Launcher, stage, tmp_path: Path,
) -> None:
    run = launcher.start(stage(60, 0), tmp_path / "run.log")
    _until_started(run)
    run.terminate()
    assert _wait(run) == 128 + 15


def test_a_vanished_local_run_is_reported_lost(stage, tmp_path: Path) -> None:
    run = get_launcher("local").start(stage(60, 0), tmp_path / "run.log")
    os.killpg(run.ref["pid"], 9)  # the wrapper dies too: no exit status is written
    _wait(run)
    assert get_launcher("local").attach(run.ref).poll() == LOST


@pytest.mark.slurm
def test_a_slurm_job_the_cluster_forgot_is_reported_lost(slurm_cluster: str,
                                                         tmp_path: Path) -> None:
    ref = {"launcher": "slurm", "module": "m", "job_id": "987654321",
           "exit_file": str(tmp_path / "run.exit"), "log": str(tmp_path / "run.log")}
    assert get_launcher("slurm").attach(ref).poll() == LOST


def test_slurm_batch_script_starts_accelerate_on_every_node(tmp_path: Path) -> None:
    config = SlurmConfig(nodes=2, gpus_per_node=4, partition="gpu", time_limit="04:00:00")
    script = batch_script(StageCommand("finetune.train", Path("/j/spec.json")), config,
                          tmp_path / "t.log", tmp_path / "t.exit")
    assert "#SBATCH --nodes=2" in script and "#SBATCH --gpus-per-node=4" in script
    assert "#SBATCH --partition=gpu" in script and "#SBATCH --signal=TERM@120" in script
    (srun,) = [line for line in script.splitlines() if line.startswith("srun ")]
    for part in ("--num_processes 8", "--num_machines 2", "--machine_rank $SLURM_NODEID",
                 "--main_process_ip $MAIN_ADDRESS", "-m finetune.train /j/spec.json"):
        assert part in srun


def _until_started(run, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while "stage started" not in run.log_tail():
        assert time.monotonic() < deadline, "stage did not start"
        time.sleep(0.1)


def test_unknown_launcher_suggests_one() -> None:
    with pytest.raises(ValueError, match="Did you mean 'local'"):
        get_launcher("locale")


def test_the_settings_accept_only_registered_launchers() -> None:
    assert set(LAUNCHERS) == {"local", "slurm", "kubernetes"}
    assert all(LAUNCHERS[name].name == name for name in LAUNCHERS)
    with pytest.raises(ValidationError, match="Did you mean 'kubernetes'"):
        Settings(launcher="kubernets")
    with pytest.raises(ValidationError, match=r"kubernetes\.image: required"):
        Settings(launcher="kubernetes")
    kube = Settings(launcher="kubernetes", kubernetes={"image": "aif:1", "nodes": 2})
    assert get_launcher(kube.launcher, kube).processes(3) == 6


def test_launchers_say_how_many_processes_a_stage_can_get() -> None:
    assert get_launcher("local").max_processes == len(os.sched_getaffinity(0))
    gpus = Settings(slurm=SlurmConfig(nodes=2, gpus_per_node=4))
    assert get_launcher("slurm", gpus).max_processes == 8
    assert get_launcher("slurm", gpus).processes(1) == 8  # one per GPU on every node
    cpus = Settings(slurm=SlurmConfig(nodes=2))
    assert get_launcher("slurm", cpus).max_processes is None  # CPU nodes
    assert get_launcher("local").processes(3) == 3
