"""What a newcomer meets first on the command line (issue #24, point 6): error messages print
what they quote, `make demo | tee log` shows progress while it trains, the demo says how to
sign in as its tenant and shows the gate's reason once, tables fit 80 columns without
cutting names, and `--help` gives flags no value type.

The demo runs here without broker, orchestrator or training: the service is a stand-in and
the job's events are scripted, fed to the same display code `make demo` uses.
"""

from __future__ import annotations

import io
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from rich.console import Console
from typer.testing import CliRunner

import aif.cli
import aif.cli.audit
import aif.cli.common
import aif.cli.following
import aif.cli.recipes
import aif.service
from aif import audit
from aif.cli import app
from aif.db.session import session_factory
from aif.follow import JobWatch
from aif.settings import get_settings
from aif.tenants import create_tenant
from events.messages import (
    EvaluationCompleted,
    EventData,
    GateDecision,
    JobProgress,
    JobStatusChanged,
    MetricScore,
    ModelReady,
)
from events.states import JobState
from recipes import load_recipe, recipe_files

S = JobState
JOB = "3f2b6a52-6a0e-5d3e-9a4c-1b2d3e4f5a6b"
GATE = ("acc on grid_ticket_routing gained 0.310 over base (needed 0.05), significant on "
        "200 paired documents (p = 0.0001 < 0.05). Above the majority answer by 0.21.")
STEPS = 120


@pytest.fixture
def out(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Callable[[], str]:
    """The CLI's consoles at 80 columns into a buffer, as a pipe or an 80-column terminal
    (force_terminal=False: a pipe, whatever FORCE_COLOR says); returns what was printed."""
    monkeypatch.setenv("AIF_HOME", str(tmp_path / "home"))
    buffer = io.StringIO()
    console = Console(file=buffer, width=80, force_terminal=False)
    for module in (aif.cli, aif.cli.audit, aif.cli.common, aif.cli.following, aif.cli.recipes):
        monkeypatch.setattr(module, "console", console)
    return buffer.getvalue


def _status(state: JobState, previous: JobState | None, reason: str) -> JobStatusChanged:
    return JobStatusChanged(job_id=JOB, tenant="demo", state=state, previous_state=previous,
                            reason=reason, at=datetime.now(UTC))


def _script() -> Iterator[EventData]:
    """A successful job's events as `wait_for_job` hands them on, the gate's reason on the
    state change it made and in evaluation.completed."""
    yield _status(S.validating, None, "request stored")
    yield _status(S.queued, S.validating, "pre-flight: usable")
    yield _status(S.training, S.queued, "claimed")
    for step in range(1, STEPS + 1):
        yield JobProgress(job_id=JOB, stage="training", step=step, total_steps=STEPS,
                          loss=3.0 - step / 100, tokens_per_s=120.0, eta_s=STEPS - step)
    yield _status(S.evaluating, S.training, "trained")
    score = MetricScore(task="grid_ticket_routing", metric="acc", base=0.3, tuned=0.61)
    yield EvaluationCompleted(job_id=JOB, tenant="demo", scores=[score],
                              gate=GateDecision(passed=True, reason=GATE))
    yield _status(S.handing_off, S.evaluating, GATE)
    yield _status(S.succeeded, S.handing_off, "model handed off")
    yield ModelReady(job_id=JOB, tenant="demo", base_model="smollm2-135m-instruct",
                     adapter_uri="file:///published/demo/adapter", files_sha256={},
                     scores=[score])


class _Service:
    """`aif.service.Service` without its broker, orchestrator and web app."""

    url = "http://127.0.0.1:8000"

    def __init__(self, *_: object, **__: object) -> None:
        pass

    def __enter__(self) -> _Service:
        return self

    def __exit__(self, *_: object) -> None:
        pass


def _demo(monkeypatch: pytest.MonkeyPatch, *args: str) -> tuple[int, list[str]]:
    """`aif demo ARGS` with its job's events scripted: its exit code and the recipes it
    submitted."""

    def wait_for_job(*_: object, on_event: Callable[[EventData], None] | None = None,
                     **__: object) -> JobWatch:
        watch = JobWatch()
        for event in _script():
            watch.add(event)
            assert on_event is not None
            on_event(event)
        return watch

    submitted: list[str] = []
    monkeypatch.setattr(aif.service, "Service", _Service)
    monkeypatch.setattr(aif.cli, "_demo_signing_key", lambda *_: None)
    monkeypatch.setattr(aif.cli, "_submit", lambda _, recipe, *__, **___: (
        submitted.append(recipe), JOB)[1])
    monkeypatch.setattr(aif.cli.following, "wait_for_job",
                        lambda cfg, topics, tenant, job_id, show: wait_for_job(on_event=show))
    done = CliRunner().invoke(app, ["demo", *args])
    return done.exit_code, submitted


@pytest.fixture
def demo(monkeypatch: pytest.MonkeyPatch, out: Callable[[], str]) -> str:
    """`aif demo`'s output with its job's events scripted."""
    code, _ = _demo(monkeypatch)
    assert code == 0, out()
    return out()


def test_a_recipe_error_prints_the_pattern_it_quotes(tmp_path: Path,
                                                     out: Callable[[], str]) -> None:
    recipe = (Path(aif.cli.__file__).parents[2] / "recipes" / "energy" /
              "grid_ticket_routing" / "recipe.yaml").read_text()
    bad = tmp_path / "bad.yaml"
    bad.write_text(recipe.replace("name: grid-ticket-routing", "name: Bad_Name", 1))
    done = CliRunner().invoke(app, ["recipes", "validate", str(bad)])
    assert done.exit_code == 1
    said = "".join(out().split())  # however it wraps
    assert "name:Stringshouldmatchpattern'^[a-z0-9][a-z0-9-]{1,62}$'" in said


def test_a_piped_demo_shows_training_progress_as_lines(demo: str) -> None:
    lines = [line for line in demo.splitlines() if line.startswith("training  step")]
    assert lines[0].startswith("training  step 1/120  loss 2.990  120 tok/s")
    assert lines[-1].startswith(f"training  step {STEPS}/{STEPS}")
    assert len(lines) < STEPS / 10  # rate-limited: not one line per step


def test_progress_lines_come_at_stage_changes_the_end_and_every_interval() -> None:
    buffer, now = io.StringIO(), [0.0]
    lines = aif.cli.following.ProgressLines(Console(file=buffer, width=200), every_s=30,
                                  clock=lambda: now[0])
    for step in range(1, 101):  # one step a second
        now[0] = float(step)
        lines.show(JobProgress(job_id=JOB, stage="training", step=step, total_steps=100))
    lines.show(JobProgress(job_id=JOB, stage="evaluating", step=1, total_steps=4))
    lines.show(_status(S.evaluating, S.training, "trained: [a-z] stays"))
    shown = buffer.getvalue().splitlines()
    assert [line.split("/")[0] for line in shown] == [
        "training  step 1", "training  step 31", "training  step 61", "training  step 91",
        "training  step 100", "evaluating  step 1", "evaluating  trained: [a-z] stays"]


def test_the_demo_prints_the_gate_reason_once(demo: str) -> None:
    assert "".join(demo.split()).count("".join(GATE.split())) == 1
    assert "gate: passed" in demo and "job finished: succeeded" in demo


def test_the_demo_says_how_to_sign_in_as_its_tenant(demo: str) -> None:
    said = " ".join(demo.split())
    assert "sign in at http://127.0.0.1:8000/signin as tenant demo" in said
    assert "aif tenants add-key demo" in said
    assert f"job page: http://127.0.0.1:8000/jobs/{JOB}" in said


@pytest.mark.parametrize("recipe", ["citizen-reply-de-dpo", "public_sector/citizen_reply_de_dpo",
                                    "public_sector/citizen_reply_de_dpo/recipe.yaml"])
def test_the_demo_runs_a_recipe_named_or_by_its_folder(
        monkeypatch: pytest.MonkeyPatch, out: Callable[[], str], recipe: str) -> None:
    assert _demo(monkeypatch, "--recipe", recipe) == (0, ["citizen-reply-de-dpo"])


def test_the_demo_refuses_an_unknown_recipe_before_starting_anything(
        monkeypatch: pytest.MonkeyPatch, out: Callable[[], str]) -> None:
    monkeypatch.setattr(aif.cli, "_setup", lambda: pytest.fail("the demo set up its services"))
    assert _demo(monkeypatch, "--recipe", "public_sector/citizen_reply_de_dpx") == (2, [])
    said = " ".join(out().split())
    assert "--recipe: recipe: no such recipe." in said and "citizen-reply-de-dpo" in said


def test_recipes_list_keeps_every_name_whole_at_80_columns(out: Callable[[], str]) -> None:
    done = CliRunner().invoke(app, ["recipes", "list"])
    assert done.exit_code == 0, done.output
    shown = out()
    assert "…" not in shown and max(len(line) for line in shown.splitlines()) <= 80
    names = {line.split()[0] for line in shown.splitlines() if line[:2].strip()}
    assert {load_recipe(name).name for name in recipe_files()} <= names
    assert "smollm2-135m-instruct" in shown and "acc on grid_ticket_routing >=" in shown


def test_audit_is_readable_at_80_columns(out: Callable[[], str]) -> None:
    job, event = str(uuid.uuid4()), str(uuid.uuid4())
    with session_factory(get_settings().db_url)() as s:
        create_tenant(s, "acme")
        audit.record(s, audit.Action.submit, actor="signing:k1", tenant="acme", job_id=job,
                     event_id=event, recipe="grid-ticket-routing")
        s.commit()
    done = CliRunner().invoke(app, ["audit"])
    assert done.exit_code == 0, done.output
    shown = out()
    assert "…" not in shown and max(len(line) for line in shown.splitlines()) <= 80
    assert f"job {job}" in shown and f"event {event}" in shown
    assert "submit · tenant acme · by signing:k1" in shown
    assert '{"recipe": "grid-ticket-routing"}' in shown
    assert shown.count("key-created · tenant acme · by operator") == 2


@pytest.mark.parametrize("command", [[], ["demo"], ["submit"], ["tenants", "create"],
                                     ["tenants", "erase"], ["audit"], ["eval"]])
def test_help_gives_flags_no_value_type(command: list[str]) -> None:
    shown = CliRunner().invoke(app, [*command, "--help"], env={"COLUMNS": "120"})
    assert shown.exit_code == 0, shown.output
    assert "<bool>" not in shown.output and "--help" in shown.output
    if command == ["demo"]:
        assert "--serve" in shown.output and "<int>" in shown.output  # values keep types
