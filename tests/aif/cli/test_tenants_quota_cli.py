"""`aif tenants set-quota` and `aif tenants quota` against the job store they configure."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from aif.cli import app
from aif.db.models import TenantQuota
from aif.db.session import session_factory
from aif.settings import get_settings


@pytest.mark.store
def test_set_quota_stores_shows_and_clears_limits(db_url: str,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIF_DATABASE_URL", db_url)
    monkeypatch.setenv("AIF_QUOTA_DEFAULTS__MONTHLY_TOKENS", "5000000")
    runner = CliRunner()
    assert runner.invoke(app, ["tenants", "create", "acme"]).exit_code == 0
    shown = runner.invoke(app, ["tenants", "set-quota", "acme", "--concurrent-jobs", "2",
                                "--dataset-size", "2GiB", "--monthly-device-hours", "10.5"])
    assert shown.exit_code == 0, shown.output
    rows = {line.split("│")[1].strip(): line.split("│")[2].strip()
            for line in shown.output.splitlines() if line.count("│") == 4}
    assert rows == {"concurrent-jobs": "tenant limit 2", "dataset-bytes":
                    "tenant limit 2,147,483,648", "monthly-tokens": "site default 5,000,000",
                    "monthly-device-hours": "tenant limit 10.5"}
    cleared = runner.invoke(app, ["tenants", "set-quota", "acme", "--concurrent-jobs",
                                  "default", "--dataset-bytes", "1000"])
    assert cleared.exit_code == 0, cleared.output
    with session_factory(get_settings().db_url)() as s:
        row = s.get_one(TenantQuota, "acme")
        assert (row.concurrent_jobs, row.dataset_bytes, row.monthly_tokens,
                row.monthly_device_hours) == (None, 1000, None, 10.5)
    quota = runner.invoke(app, ["tenants", "quota", "acme"])
    assert "unlimited" in quota.output and "0 queued or running" in quota.output


@pytest.mark.parametrize(("args", "says"), [
    (["nobody", "--concurrent-jobs", "1"], "tenant nobody: no such tenant"),
    (["acme", "--monthly-tokens", "many"], "a number or 'default'"),
    (["acme", "--dataset-size", "2 parsecs"], "a number or 'default'"),
    (["acme", "--dataset-bytes", "1", "--dataset-size", "1KiB"], "give one of them"),
    (["acme", "--concurrent-jobs", "-1"], "limits must not be negative"),
    (["acme"], "give at least one limit"),
])
def test_set_quota_refuses_what_it_cannot_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                               args: list[str], says: str) -> None:
    monkeypatch.setenv("AIF_HOME", str(tmp_path / "home"))
    runner = CliRunner()
    assert runner.invoke(app, ["tenants", "create", "acme"]).exit_code == 0
    refused = runner.invoke(app, ["tenants", "set-quota", *args])
    assert refused.exit_code == 2
    assert says in " ".join(refused.output.replace("│", " ").split())
    assert runner.invoke(app, ["tenants", "quota", "nobody"]).exit_code == 2
