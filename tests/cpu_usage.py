"""CPU seconds per test, summed over the test process and the processes it started and reaped.

Under pytest-xdist four workers share two cores, so `--durations` measures contention as much
as work; the CPU a test costs is what decides how long the suite takes on a 2-core box. Each
worker measures the CPU of every test (setup, call and teardown, session fixtures counted on
the test that first needed them), sends it with the test's report, and the controller prints
the 30 costliest tests, the costliest modules and the total at the end of the run.
"""

from __future__ import annotations

import resource
from collections import defaultdict
from collections.abc import Generator

import pytest

_KEY = "cpu_s"
_started: dict[str, float] = {}
_spent: dict[str, float] = {}


def _cpu_now() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def pytest_runtest_logstart(nodeid: str, location: object) -> None:
    _started[nodeid] = _cpu_now()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator:
    outcome = yield
    report = outcome.get_result()
    if report.when == "teardown" and item.nodeid in _started:
        report.user_properties.append((_KEY, _cpu_now() - _started.pop(item.nodeid)))


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.when == "teardown":
        for key, value in report.user_properties:
            if key == _KEY:
                _spent[report.nodeid] = float(value)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not _spent:
        return
    write = terminalreporter.write_line
    terminalreporter.section("CPU seconds (test process and the processes it reaped)")
    for nodeid, seconds in sorted(_spent.items(), key=lambda kv: -kv[1])[:30]:
        write(f"{seconds:8.1f}  {nodeid}")
    modules: dict[str, list[float]] = defaultdict(list)
    for nodeid, seconds in _spent.items():
        modules[nodeid.split("::", 1)[0]].append(seconds)
    write("")
    write("   CPU s  tests  module")
    for module, spent in sorted(modules.items(), key=lambda kv: -sum(kv[1]))[:20]:
        write(f"{sum(spent):8.1f}  {len(spent):5d}  {module}")
    write(f"{sum(_spent.values()):8.1f}  {len(_spent):5d}  all tests")
