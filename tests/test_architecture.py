"""The import rules of docs/architecture.md, checked: the one-way arrows between the packages,
read from every `import` in the source (function-level ones too), and what the light entry
points load, read from `sys.modules` in a fresh interpreter."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

from aif.stages import MODULES

ROOT = Path(__file__).resolve().parent.parent
OURS = ("aif", "events", "stagefiles", "recipes", "finetune", "evaluation", "serving")
ALLOWED = {
    "events": {"events"},
    "stagefiles": {"stagefiles", "events"},
    "recipes": {"recipes", "events", "stagefiles"},
    "finetune": {"finetune", "events", "stagefiles"},
    "evaluation": {"evaluation", "events", "stagefiles"},
    "serving": {"serving", "events", "stagefiles"},
    "aif": {"aif", "events", "stagefiles", "recipes"},
}
"""Which of our top-level packages each may import: the stages only the two contracts (the
wire, `events`, and the stage files, `stagefiles`), the wire contract nothing else of ours,
the shell (`aif`) never a stage."""
HEAVY = ("torch", "transformers", "peft", "lm_eval", "accelerate", "datasets", "vllm")
"""What only the stages load: neither the shell nor the contract imports it."""

ORCHESTRATOR_SHARED = {f"aif.orchestrator.{m}" for m in (
    "admission", "references", "scores", "gate", "throughput")}
"""What the web app may use of the orchestrator: the checks a request is refused by and the
arithmetic of scores, gates and throughput, never the modules that drive jobs."""

FORBIDDEN: dict[str, tuple[str, ...]] = {
    "aif.settings": ("sqlalchemy", "aif.db", "aif.quotas", "aif.jobstore", "aif.orchestrator"),
    "aif.jobstore": ("aif.orchestrator", "aif.web", "aif.registry", "aif.erasure", "aif.cli",
                     "aif.service"),
    "aif.registry": ("aif.orchestrator", "aif.web", "aif.cli"),
    "aif.erasure": ("aif.orchestrator", "aif.web", "aif.cli"),
    "aif.orchestrator": ("aif.web", "aif.cli", "aif.erasure"),
    "aif.web": ("aif.orchestrator", "aif.cli"),
}
"""Module prefix -> what no module under it may import (see docs/architecture.md)."""


def _module(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Every absolute module an `import` names, `from a import b` as `a` and `a.b` (b may be
    a module)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found |= {node.module, *(f"{node.module}.{alias.name}" for alias in node.names)}
    return found


SOURCES = {_module(p): _imports(p) for top in OURS for p in (ROOT / top).rglob("*.py")}


def _under(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


@pytest.mark.parametrize("top", OURS)
def test_each_package_imports_only_what_its_arrows_allow(top: str) -> None:
    stage = top in ("finetune", "evaluation", "serving")
    bad = sorted(f"{module} imports {name}" for module, names in SOURCES.items()
                 if _under(module, top) for name in names
                 if (name.split(".")[0] in OURS and name.split(".")[0] not in ALLOWED[top])
                 or (not stage and name.split(".")[0] in HEAVY))
    assert not bad, bad


@pytest.mark.parametrize("prefix", FORBIDDEN)
def test_no_import_runs_against_an_arrow_inside_the_shell(prefix: str) -> None:
    allowed = ORCHESTRATOR_SHARED if prefix == "aif.web" else set()
    bad = sorted(f"{module} imports {name}" for module, names in SOURCES.items()
                 if _under(module, prefix) for name in names
                 if any(_under(name, f) for f in FORBIDDEN[prefix])
                 and not any(_under(name, a) for a in allowed))
    assert not bad, bad


def _calls(path: Path, name: str) -> bool:
    return any(isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
               and node.func.id == name for node in ast.walk(ast.parse(path.read_text())))


def test_the_job_store_rules_live_in_the_job_store() -> None:
    """Outside `aif.jobstore` nobody writes an outbox row or reads the table of moves."""
    bad = sorted(_module(p) for p in (ROOT / "aif").rglob("*.py")
                 if not _under(_module(p), "aif.jobstore")
                 and (_calls(p, "Outbox")
                      or "aif.jobstore.transitions.ALLOWED" in SOURCES[_module(p)]))
    assert not bad, bad


def test_stage_modules_are_named_only_in_the_table_of_stages() -> None:
    """A stage's module is a row of `aif.stages`; nowhere else in the shell a string."""
    bad = sorted(f"{_module(p)}: {node.value}" for p in (ROOT / "aif").rglob("*.py")
                 if p != ROOT / "aif" / "stages.py"
                 for node in ast.walk(ast.parse(p.read_text()))
                 if isinstance(node, ast.Constant) and node.value in MODULES)
    assert not bad, bad


def _loaded(imports: str, prefixes: tuple[str, ...]) -> list[str]:
    """The modules under `prefixes` a fresh interpreter holds after `import {imports}`."""
    code = (f"import json, sys, {imports}; print(json.dumps(sorted(m for m in sys.modules "
            f"if m.split('.')[0] in {prefixes!r})))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, check=True)
    return json.loads(done.stdout)


def test_settings_load_no_database() -> None:
    assert _loaded("aif.settings", ("sqlalchemy", "alembic")) == []


def test_the_shell_loads_scipy_only_when_it_gates() -> None:
    """scipy.stats is about a third of the `aif` command's import time, and every `aif`
    process, test worker and stage launch by the shell paid it before it was deferred."""
    assert _loaded("aif.cli, aif.service, aif.web.app", ("scipy",)) == []


def test_the_stages_load_nothing_of_the_shell() -> None:
    assert _loaded(", ".join(MODULES), ("aif", "fastapi", "sqlalchemy")) == []
