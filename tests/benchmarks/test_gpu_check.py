"""The GPU check script (`benchmarks/gpu_check.sh`, issue 28) in its dry mode: tiny shapes in
fp32 on the CPU, every case reported (QLoRA measured or skipped with the reason, the
evaluation stage run and scored), exit 0; a failing case is reported and costs no other.
The GPU figures themselves need a GPU machine (docs/benchmarks.md)."""

from __future__ import annotations

import builtins
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from benchmarks.gpu_check import Cases, _qlora_unavailable, peak_tflops

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"


def _run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True,
                          timeout=300, env={**os.environ, **(env or {})}, cwd=ROOT)


def test_dry_mode_reports_every_case(tmp_path: Path) -> None:
    out = tmp_path / "dry.json"
    done = _run("--out", str(out), env={"GPU_CHECK_DRY": "1"})
    assert done.returncode == 0, done.stderr
    result = json.loads(out.read_text())
    assert result["dry"] is True
    cases = {case["case"]: case for case in result["cases"]}
    assert set(cases) == {"lora-fp32-tiny", "eval-tiny", "qlora-nf4-tiny", "eval-stage-tiny"}
    for name in ("lora-fp32-tiny", "eval-tiny"):
        assert cases[name]["status"] == "measured"
        assert cases[name]["device"] == "cpu"
        assert cases[name]["tokens_per_s"] > 0
        assert cases[name]["peak_memory_mb"] > 0
        assert name in done.stdout
    assert cases["lora-fp32-tiny"]["mfu"] is None and "MFU n/a" in done.stdout
    assert cases["lora-fp32-tiny"]["model_flops_per_s"] > 0
    qlora = cases["qlora-nf4-tiny"]
    assert qlora["status"] == "measured" or qlora["status"].startswith("skipped: ")
    if qlora["status"] != "measured":
        assert f"qlora-nf4-tiny   cpu: {qlora['status']}" in done.stdout
    stage = cases["eval-stage-tiny"]
    assert stage["status"] == "measured", stage["status"]
    assert (stage["stage_device"], stage["limit"]) == ("cpu", 4)
    assert set(stage["tuned"]) == {"grid_ticket_routing/acc", "general_knowledge_guard/acc"}
    assert all(0 <= v <= 1 for v in stage["tuned"].values())
    assert "eval-stage-tiny  cpu: stage on cpu" in done.stdout


def test_a_failing_case_is_reported_and_the_next_one_runs() -> None:
    reported: list[dict] = []
    cases = Cases(torch.device("cpu"), "cpu", None, reported.append)

    def out_of_memory() -> dict:
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB\nmore")

    assert cases.run("lora-bf16-8b", out_of_memory) is False
    assert cases.run("eval-1b", lambda: {"tokens_per_s": 1.0}) is True
    assert [(c["case"], c["status"]) for c in reported] == [
        ("lora-bf16-8b", "failed: OutOfMemoryError: CUDA out of memory. Tried to allocate "
                         "2.00 GiB"),
        ("eval-1b", "measured")]
    assert reported[1]["peak_memory_mb"] > 0


def test_qlora_says_when_bitsandbytes_is_missing_or_not_importable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # import raises ModuleNotFoundError
    assert _qlora_unavailable(torch.device("cuda")) == (
        "bitsandbytes not installed (not a project dependency)")
    real_import = builtins.__import__

    def broken(name: str, *args: object, **kwargs: object) -> object:
        if name == "bitsandbytes":
            raise RuntimeError("CUDA Setup failed despite GPU being available.\ndetails")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", broken)
    assert _qlora_unavailable(torch.device("cuda")) == (
        "bitsandbytes not importable (RuntimeError: CUDA Setup failed despite GPU being "
        "available.)")


def test_an_unknown_flag_fails_with_a_clear_message(tmp_path: Path) -> None:
    done = _run("--dry", "--bogus", "--out", str(tmp_path / "x.json"))
    assert done.returncode == 2
    assert "unrecognized arguments: --bogus" in done.stderr
    assert not (tmp_path / "x.json").exists()


@pytest.mark.parametrize(("name", "peak"), [
    ("NVIDIA H100 80GB HBM3", 989.0), ("NVIDIA H100 PCIe", 756.0), ("NVIDIA H100 NVL", 835.0),
    ("NVIDIA H200", 989.0),
    ("NVIDIA A100-SXM4-80GB", 312.0), ("NVIDIA L40S", 362.0), ("Tesla T4", None),
])
def test_peak_tflops_by_card_name(name: str, peak: float | None) -> None:
    assert peak_tflops(name) == peak
