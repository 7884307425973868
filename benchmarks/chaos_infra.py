"""The real things the chaos run breaks: orchestrators, broker, PostgreSQL, a small disk.

Everything here is started by the run, listens on loopback only and is torn down by it;
nothing touches the shared PostgreSQL cluster (the run restarts a private one).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition
from sqlalchemy import create_engine, text
from sqlalchemy.exc import DBAPIError

from aif.broker import EmbeddedBroker
from aif.launchers.local import LocalLauncher
from benchmarks.local_tokenizer import smollm2_tokenizer
from events.bus import KafkaConfig, make_consumer
from events.topics import Topics

AIF = str(Path(sys.executable).with_name("aif"))
T = TypeVar("T")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Deadline:
    """One clock for the whole run: every wait is bounded by it as well as by its own limit."""

    def __init__(self, seconds: float) -> None:
        self.start = time.monotonic()
        self.end = self.start + seconds

    def left(self) -> float:
        return self.end - time.monotonic()

    def expired(self) -> bool:
        return self.left() <= 0

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def until(self, predicate: Callable[[], T], limit: float, tick: float = 0.25,
              between: Callable[[], None] = lambda: None) -> T | None:
        """Poll `predicate` until it is truthy, `limit` seconds pass or the deadline does."""
        stop = time.monotonic() + min(limit, max(self.left(), 0))
        while True:
            between()
            value = predicate()
            if value or time.monotonic() >= stop:
                return value or None
            time.sleep(tick)


def run_alive(ref: dict[str, Any] | None) -> bool:
    """The local stage run of a job's `run_ref` is still running, by the launcher's own test."""
    return bool(ref and ref.get("pid")) and LocalLauncher().attach(ref).poll() is None


def kill_run(ref: dict[str, Any]) -> bool:
    """SIGKILL a stage's whole process group (wrapper, accelerate, ranks): no exit code left."""
    if not run_alive(ref):
        return False
    with contextlib.suppress(ProcessLookupError):
        os.killpg(int(ref["pid"]), signal.SIGKILL)
        return True
    return False


# -- orchestrators ------------------------------------------------------------------------

class Orchestrator:
    """`aif up` in its own process, configured like a deployment (as
    tests/aif/orchestrator/test_faults)."""

    def __init__(self, name: str, env: dict[str, str], log: Path, failpoints: str = "") -> None:
        self.name, self.log, self.failpoints = name, log, failpoints
        with log.open("ab") as out:
            self.proc = subprocess.Popen(
                [AIF, "up"], stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env={**os.environ, **env, "AIF_FAILPOINTS": failpoints,
                     "AIF_WEB_PORT": str(free_port())},
            )

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def up(self) -> bool:
        return "aif-tuning is up" in self.log.read_text(errors="replace")

    def kill9(self) -> None:
        if self.alive:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)

    def signal(self, sig: signal.Signals) -> None:
        if self.alive:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(sig)

    def stop(self, timeout: float = 60) -> None:
        if self.alive:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill9()


@dataclass
class Fleet:
    """The orchestrators of the run; a killed one is replaced by a fresh, unarmed one."""

    env: dict[str, str]
    logs: Path
    procs: list[Orchestrator] = field(default_factory=list)
    started: int = 0

    def start(self, failpoints: str = "") -> Orchestrator:
        self.started += 1
        name = f"o{self.started}" + (f"[{failpoints}]" if failpoints else "")
        orch = Orchestrator(name, self.env, self.logs / f"orchestrator-{self.started}.log",
                            failpoints)
        self.procs.append(orch)
        return orch

    def alive(self) -> list[Orchestrator]:
        return [o for o in self.procs if o.alive]

    def armed(self) -> list[Orchestrator]:
        return [o for o in self.alive() if o.failpoints]

    def reap(self) -> list[Orchestrator]:
        """Forget the dead ones and return them."""
        dead = [o for o in self.procs if not o.alive]
        self.procs = [o for o in self.procs if o.alive]
        return dead

    def fill(self, target: int) -> list[Orchestrator]:
        """Start unarmed orchestrators until `target` run; an armed one counts as running."""
        self.reap()
        return [self.start() for _ in range(target - len(self.alive()))]

    def freeze(self) -> None:
        for o in self.alive():
            o.signal(signal.SIGSTOP)

    def thaw(self) -> None:
        for o in self.procs:
            o.signal(signal.SIGCONT)

    def stop_all(self) -> None:
        self.thaw()
        for o in self.procs:
            o.stop(30)


# -- broker -------------------------------------------------------------------------------

class Broker:
    """The embedded, memory-only broker; `epoch` counts its lives (offsets restart at 0)."""

    def __init__(self, log: Path) -> None:
        self.bootstrap = f"127.0.0.1:{free_port()}"
        self.cfg = KafkaConfig(bootstrap_servers=self.bootstrap)
        self.embedded = EmbeddedBroker(self.bootstrap, log)
        self.epoch = 0

    def start(self) -> None:
        self.embedded.start()

    def kill9(self) -> None:
        proc = self.embedded.proc
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
        self.embedded.stop()
        self.epoch += 1

    def stop(self) -> None:
        self.embedded.stop()

    def topics_exist(self, names: list[str]) -> bool:
        try:
            admin = KafkaAdminClient(bootstrap_servers=self.bootstrap, request_timeout_ms=5000)
        except Exception:
            return False
        try:
            return set(names) <= set(admin.list_topics())
        except Exception:
            return False
        finally:
            admin.close()

    def group_members(self, group: str) -> int:
        try:
            admin = KafkaAdminClient(bootstrap_servers=self.bootstrap, request_timeout_ms=5000)
        except Exception:
            return -1
        try:
            described = admin.describe_consumer_groups([group])
            return len(described[0].members) if described else 0
        except Exception:
            return -1
        finally:
            admin.close()


@dataclass(frozen=True)
class Record:
    epoch: int
    topic: str
    partition: int
    offset: int
    key: str | None
    value: bytes | None
    headers: dict[str, str]

    def event(self) -> dict[str, Any]:
        try:
            obj = json.loads(self.value or b"")
        except (ValueError, RecursionError):
            return {}
        return obj if isinstance(obj, dict) else {}


class Collector:
    """Reads the tenant's status and models topics and the dead-letter topic from the start,
    in every broker life.

    A memory-only broker forgets what it had when it dies, so the run catches up with every
    partition's end (producers frozen) just before it kills the broker.
    """

    def __init__(self, broker: Broker, topics: Topics, tenant: str) -> None:
        self.broker, self.names = broker, [*topics.of_tenant(tenant), topics.dead_letter]
        self.records: list[Record] = []
        self.seen: set[tuple[int, str, int, int]] = set()  # a reconnect reads from the start
        self.consumer: KafkaConsumer | None = None
        self.parts: list[TopicPartition] = []
        self.epoch = -1

    def _connect(self) -> bool:
        if self.consumer is not None and self.epoch == self.broker.epoch:
            return True
        self.close()
        try:
            consumer = make_consumer(self.broker.cfg, consumer_timeout_ms=1000,
                                     request_timeout_ms=6000, metadata_max_age_ms=2000)
        except Exception:
            return False
        consumer.topics()
        parts = [TopicPartition(t, p) for t in self.names
                 for p in sorted(consumer.partitions_for_topic(t) or [])]
        if not all(consumer.partitions_for_topic(t) for t in self.names):
            consumer.close()
            return False
        consumer.assign(parts)
        consumer.seek_to_beginning(*parts)
        self.consumer, self.parts, self.epoch = consumer, parts, self.broker.epoch
        return True

    def poll(self, timeout_ms: int = 100) -> None:
        if not self._connect():
            return
        assert self.consumer is not None
        try:
            batch = self.consumer.poll(timeout_ms=timeout_ms)
        except Exception:
            self.close()
            return
        for rs in batch.values():
            for r in rs:
                where = (self.epoch, r.topic, r.partition, r.offset)
                if where in self.seen:
                    continue
                self.seen.add(where)
                headers = {k: v.decode(errors="replace") for k, v in (r.headers or [])}
                self.records.append(Record(self.epoch, r.topic, r.partition, r.offset,
                                           r.key.decode(errors="replace") if r.key else None,
                                           r.value, headers))

    def caught_up(self) -> bool:
        """Every partition read to its current end (one round trip)."""
        if not self._connect():
            return False
        assert self.consumer is not None
        try:
            ends = self.consumer.end_offsets(self.parts)
            return all(self.consumer.position(tp) >= end for tp, end in ends.items())
        except Exception:
            return False

    def catch_up(self, deadline: Deadline, limit: float = 60) -> bool:
        return bool(deadline.until(self.caught_up, limit, tick=0, between=lambda: self.poll(500)))

    def close(self) -> None:
        if self.consumer is not None:
            with contextlib.suppress(Exception):
                self.consumer.close()
        self.consumer = None


# -- PostgreSQL -----------------------------------------------------------------------------

class PgCluster:
    """A private PostgreSQL cluster (pg_createcluster), so restarting it disturbs no one."""

    def __init__(self) -> None:
        self.version = _pg_version()
        self.name = f"chaos{uuid.uuid4().hex[:8]}"
        self.port = free_port()
        self.created = False

    def _ctl(self, *args: str, timeout: float = 120) -> None:
        subprocess.run(list(args), check=True, capture_output=True, text=True, timeout=timeout)

    def create(self) -> str:
        """Create and start it, create a fresh database, return its SQLAlchemy URL."""
        self.created = True  # from here on, drop() removes whatever exists of it
        self._ctl("pg_createcluster", self.version, self.name, "-p", str(self.port),
                  "-o", "listen_addresses=localhost", "--", "--auth=trust")
        self._ctl("pg_ctlcluster", "--skip-systemctl-redirect", self.version, self.name, "start")
        import psycopg

        with psycopg.connect(f"postgresql://postgres@127.0.0.1:{self.port}/postgres",
                             autocommit=True, connect_timeout=10) as admin:
            admin.execute('CREATE DATABASE "chaos"')
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/chaos"

    def restart(self) -> None:
        self._ctl("pg_ctlcluster", "--skip-systemctl-redirect", self.version, self.name,
                  "restart", "-m", "fast")

    def drop(self) -> None:
        if self.created:
            with contextlib.suppress(subprocess.SubprocessError, OSError):
                self._ctl("pg_ctlcluster", "--skip-systemctl-redirect", self.version, self.name,
                          "stop", "-m", "immediate")
            with contextlib.suppress(subprocess.SubprocessError, OSError):
                self._ctl("pg_dropcluster", self.version, self.name)
            self.created = False


def _pg_version() -> str:
    versions = sorted(Path("/etc/postgresql").iterdir()) if Path("/etc/postgresql").is_dir() \
        else []
    if not versions:
        raise RuntimeError("no PostgreSQL installed (/etc/postgresql is empty); apt-get install "
                           "postgresql")
    return versions[-1].name


class Store:
    """Read-only SQL on the job store; rides out a database restart by retrying."""

    def __init__(self, url: str) -> None:
        self.engine = create_engine(url, pool_pre_ping=True)

    def rows(self, sql: str, limit_s: float = 120, **params: Any) -> list[dict[str, Any]]:
        stop = time.monotonic() + limit_s
        while True:
            try:
                with self.engine.connect() as conn:
                    return [dict(r._mapping) for r in conn.execute(text(sql), params)]
            except DBAPIError:
                if time.monotonic() > stop:
                    raise
                time.sleep(0.5)

    def has_column(self, table: str, column: str) -> bool:
        return bool(self.rows(
            "SELECT 1 FROM information_schema.columns WHERE table_name = :t AND column_name = :c",
            t=table, c=column))


# -- a small disk ---------------------------------------------------------------------------

class SmallDisk:
    """A tmpfs at the orchestrator's jobs directory, to fill up on purpose."""

    def __init__(self, path: Path, size_mb: int) -> None:
        self.path, self.size_mb = path, size_mb
        self.filler = path / ".chaos-filler"
        self.mounted = False

    def mount(self) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={self.size_mb}m,mode=0755",
                        "chaos-jobs", str(self.path)], check=True, capture_output=True,
                       timeout=30)
        self.mounted = True

    def fill(self) -> int:
        """Write the filler until the disk is full (ENOSPC); return its size in bytes."""
        written = 0
        with self.filler.open("wb", buffering=0) as fh:
            for chunk in (1 << 20, 1 << 12, 1 << 9):
                block = b"\0" * chunk
                try:
                    while True:
                        written += fh.write(block)
                except OSError as exc:
                    if exc.errno != errno.ENOSPC:
                        raise
        return written

    def free(self) -> None:
        self.filler.unlink(missing_ok=True)

    def unmount(self) -> None:
        self.free()
        if self.mounted:
            subprocess.run(["umount", "-l", str(self.path)], capture_output=True, timeout=30)
            self.mounted = False


# -- the tiny model -------------------------------------------------------------------------

def build_tiny_model(out: Path) -> Path:
    """A tiny random Llama with the real SmolLM2 tokenizer (as tests/conftest.py builds it):
    the real code paths, trained in seconds."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    if (out / "config.json").is_file():
        return out
    tokenizer = smollm2_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return out
