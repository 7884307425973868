"""The GPU check script (`benchmarks/gpu_check.sh`, issue 28) in its dry mode: tiny shapes in
fp32 on the CPU, every case reported (QLoRA measured or skipped with the reason), exit 0.
The GPU figures themselves need a GPU machine (docs/benchmarks.md)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from benchmarks.gpu_check import peak_tflops

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
    assert set(cases) == {"lora-fp32-tiny", "eval-tiny", "qlora-nf4-tiny"}
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


def test_an_unknown_flag_fails_with_a_clear_message(tmp_path: Path) -> None:
    done = _run("--dry", "--bogus", "--out", str(tmp_path / "x.json"))
    assert done.returncode == 2
    assert "unrecognized arguments: --bogus" in done.stderr
    assert not (tmp_path / "x.json").exists()


@pytest.mark.parametrize(("name", "peak"), [
    ("NVIDIA H100 80GB HBM3", 989.0), ("NVIDIA H100 PCIe", 756.0), ("NVIDIA H200", 989.0),
    ("NVIDIA A100-SXM4-80GB", 312.0), ("NVIDIA L40S", 362.0), ("Tesla T4", None),
])
def test_peak_tflops_by_card_name(name: str, peak: float | None) -> None:
    assert peak_tflops(name) == peak
