"""Seeded chaos run: good and hostile requests while orchestrators, stages, the broker, the
database and the disk fail at seeded points; then every request must have ended exactly once.

    .venv/bin/python -m benchmarks.chaos --seed 1 --faults 20

Needs root (a tmpfs at the jobs directory, a private PostgreSQL cluster that it restarts) and
PostgreSQL installed. Everything listens on loopback. The same seed gives the same plan of
faults and requests; the moments the faults hit depend on the machine. Exit 0 only when no
request was lost or doubled, nothing is left running, the outbox is empty and every planned
fault was injected. Why each check: README, "What survives what".
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.chaos_infra import (
    Broker,
    Collector,
    Deadline,
    Fleet,
    Orchestrator,
    PgCluster,
    Record,
    SmallDisk,
    Store,
    build_tiny_model,
    kill_run,
    run_alive,
)
from events.bus import envelope, make_producer
from events.messages import FineTuneRequested
from events.recipe import Recipe
from events.topics import Topics
from recipes import copied_into, load_recipe
from stagefiles.jobspec import PROGRESS_LOG

TENANT = "chaos"  # every request of the run is signed as this tenant
TERMINAL = {"succeeded", "failed", "cancelled", "rejected"}
ORDER = ["validating", "queued", "training", "evaluating", "handing_off"]
GOOD = "good"
HOSTILE = ("random-bytes", "deep-json", "no-id", "unknown-recipe", "random-train-file")
FAULTS = (
    "intake.after_store", "intake.after_commit", "intake.after_dlq", "preflight.kill",
    "training.kill", "checkpoint.before_rename", "evaluation.kill", "worker.before_handoff",
    "relay.after_send", "orchestrator.kill9", "broker.restart", "disk.full", "db.restart",
)
ONCE = {"db.restart"}
MAX_STEPS, CHECKPOINT_STEPS = 40, 5
STATUS_SUFFIX, READY_SUFFIX = ".job.status.v1", ".model.ready.v1"


def plan_faults(rng: random.Random, n: int) -> list[str]:
    """Every kind once if n allows (the database restart only once), the rest drawn."""
    if n <= len(FAULTS):
        chosen = rng.sample(FAULTS, n)
    else:
        again = [k for k in FAULTS if k not in ONCE]
        chosen = [*FAULTS, *rng.choices(again, k=n - len(FAULTS))]
    rng.shuffle(chosen)
    return chosen


@dataclass
class Sent:
    n: int
    kind: str
    key: str
    source: str
    value: bytes
    partition: int | None = None
    at: float = 0.0

    @property
    def good(self) -> bool:
        return self.kind == GOOD


@dataclass
class Fault:
    n: int
    kind: str
    injected: bool = False
    at: float = 0.0
    job: str | None = None
    notes: list[str] = field(default_factory=list)


@dataclass
class DiskWatch:
    """What a job did after its disk filled: a retry shows as attempts or a new stage run."""

    pid: int | None
    attempts: set[int] = field(default_factory=set)
    pids: set[int] = field(default_factory=set)


class Chaos:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.rng = random.Random(args.seed)
        self.deadline = Deadline(args.deadline_min * 60)
        self.work: Path = args.workdir
        self.topics = Topics(f"chaos{args.seed}x{os.getpid()}")
        self.sent: list[Sent] = []
        self.unsent: list[Sent] = []
        kinds = args.kinds.split(",") if args.kinds else plan_faults(self.rng, args.faults)
        self.faults = [Fault(i + 1, k) for i, k in enumerate(kinds)]
        self.violations: list[str] = []
        self.incidental: list[str] = []
        self.jobs: dict[str, dict[str, Any]] = {}
        self.modules: dict[str, set[str]] = {}
        self.refs: dict[tuple[int, str | None], dict[str, Any]] = {}
        self.disk_watch: dict[str, DiskWatch] = {}
        self.pumping = True
        self.auto_fill = True
        self.broker_down = False
        self.target = 2
        self.hostile_turn = 0
        self.next_hostile = 0.0
        self.has_attempts = False
        self.producer = None
        self.sign: Callable[[bytes], list[tuple[str, bytes]] | None] = lambda value: None

    # -- output ----------------------------------------------------------------------------
    def say(self, text: str) -> None:
        print(f"[{self.deadline.elapsed():7.1f}s] {text}", flush=True)

    # -- setup -----------------------------------------------------------------------------
    def setup(self) -> None:
        self.work.mkdir(parents=True, exist_ok=True)
        (self.work / "logs").mkdir(exist_ok=True)
        (self.work / "data").mkdir(exist_ok=True)
        self.model = build_tiny_model(self.args.model or self.work / "tiny-model")
        self.recipe = self._tiny_recipe()
        self.pg = PgCluster()
        self.db_url = self.pg.create()
        self.say(f"PostgreSQL {self.pg.version}/{self.pg.name} on 127.0.0.1:{self.pg.port}")
        self.broker = Broker(self.work / "logs" / "broker.log")
        self.broker.start()
        self.say(f"broker on {self.broker.bootstrap}, topics {self.topics.prefix}.*")
        home = self.work / "home"
        self.disk = SmallDisk(home / "jobs", self.args.disk_mb)
        self.disk.mount()
        self.env = {
            "AIF_HOME": str(home), "AIF_DATABASE_URL": self.db_url,
            "AIF_DATA_ROOT": str(self.work / "data"),
            "AIF_BASE_MODEL_ROOTS": json.dumps([str(self.model)]),  # the inline recipe's base
            "AIF_KAFKA__BOOTSTRAP_SERVERS": self.broker.bootstrap,
            "AIF_TOPIC_PREFIX": self.topics.prefix,
            "AIF_CONSUMER_GROUP": f"{self.topics.prefix}-orchestrators",
            "AIF_MAX_POLL_INTERVAL_MS": "3000", "AIF_SESSION_TIMEOUT_MS": "3000",
            "AIF_LEASE_S": str(self.args.lease_s), "AIF_WORKER_SLOTS": "2",
            "AIF_EMBEDDED_BROKER": "false", "AIF_WEB_HOST": "127.0.0.1",
            "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
        }
        self.fleet = Fleet(self.env, self.work / "logs")
        first = self.fleet.start()  # alone first: it migrates the fresh database
        if not self.deadline.until(lambda: first.up() or not first.alive, 120):
            raise RuntimeError(f"the first orchestrator did not come up; see {first.log}")
        if not first.alive:
            raise RuntimeError(f"the first orchestrator exited; see {first.log}")
        self.fleet.start()
        self.store = Store(self.db_url)
        self.sign = self._signer()
        self.has_attempts = self.store.has_column("jobs", "attempts")
        self.has_dead_letters = self.store.has_column("dead_letters", "value")
        self.collector = Collector(self.broker, self.topics, TENANT)
        self.producer = make_producer(self.broker.cfg)

    def _signer(self) -> Callable[[bytes], list[tuple[str, bytes]] | None]:
        """Sign every record as tenant `chaos`, as a partner must where the service requires
        signed events; hostile records too, so that they are refused for their content."""
        try:
            from aif.tenants import create_tenant
            from events.signing import sign
        except ImportError:
            self.say("this service knows no signed events: requests go unsigned")
            return lambda value: None
        from aif.db.session import session_factory

        with session_factory(self.db_url)() as session:
            credentials = create_tenant(session, TENANT)
            session.commit()
        key_id, secret = credentials.signing_key_id, credentials.signing_secret
        self.say(f"requests are signed by tenant chaos, key {key_id}")
        return lambda value: sign(value, key_id, secret)

    def _tiny_recipe(self) -> Recipe:
        """tests/aif/conftest.py's tiny_request, with a checkpoint every few steps; its files
        copied into the chaos tenant's data root, as an inline recipe's must be."""
        recipe = copied_into(load_recipe("grid-ticket-routing"), self.work / "data" / "chaos")
        return recipe.model_copy(update={
            "name": "tiny-grid-routing",
            "model": recipe.model.model_copy(update={"base": str(self.model)}),
            "train": recipe.train.model_copy(update={
                "max_steps": MAX_STEPS, "batch_size": 4, "logging_steps": 1,
                "checkpoint_steps": CHECKPOINT_STEPS}),
            "eval": recipe.eval.model_copy(update={"limit": 20}),
            "gate": recipe.gate.model_copy(update={"min_gain": -1.0, "alpha": 1.0,
                                                   "majority_margin": -1.0, "max_class_share": 1.0,
                                                   "guards": []}),
        })

    # -- requests --------------------------------------------------------------------------
    def _event_bytes(self, data: FineTuneRequested, source: str) -> bytes:
        return envelope(data, source=source, tenant=TENANT).to_bytes()

    def request(self, kind: str, partition: int | None = None) -> Sent:
        n = len(self.sent) + len(self.unsent) + 1
        source = f"urn:chaos:{kind}:{n}"
        key = f"chaos-{n}"
        tiny = FineTuneRequested(recipe_inline=self.recipe)
        if kind == GOOD:
            value = self._event_bytes(tiny, source)
        elif kind == "random-bytes":
            value = b"\xff" + os.urandom(self.rng.randint(16, 512))  # never valid UTF-8 JSON
        elif kind == "deep-json":  # a valid envelope whose data nests 10,000 deep
            event = json.loads(self._event_bytes(FineTuneRequested(recipe="no-such-recipe"),
                                                 source))
            event["data"]["labels"] = "DEEP"
            value = json.dumps(event).replace('"DEEP"', "[" * 10_000 + "]" * 10_000).encode()
        elif kind == "no-id":
            event = json.loads(self._event_bytes(tiny, source))
            del event["id"]
            value = json.dumps(event).encode()
        elif kind == "unknown-recipe":
            value = self._event_bytes(FineTuneRequested(recipe="no-such-recipe"), source)
        elif kind == "random-train-file":
            path = self.work / "data" / "chaos" / f"random-{n}.jsonl"
            path.write_bytes(os.urandom(4096))
            value = self._event_bytes(
                FineTuneRequested(recipe_inline=self.recipe, train_file=str(path)), source)
        else:
            raise ValueError(kind)
        sent = Sent(n, kind, key, source, value, partition)
        self.unsent.append(sent)
        self.flush()
        return sent

    def next_hostile_kind(self) -> str:
        kind = HOSTILE[self.hostile_turn % len(HOSTILE)]
        self.hostile_turn += 1
        return kind

    def flush(self) -> None:
        """Send what waits; a request counts as sent once the broker acked it."""
        if self.broker_down or not self.unsent:
            return
        for s in list(self.unsent):
            try:
                self.producer.send(self.topics.requests, key=s.key.encode(), value=s.value,
                                   partition=s.partition, headers=self.sign(s.value)
                                   ).get(timeout=30)
            except Exception as exc:
                self.say(f"request {s.n} not sent yet: {exc!r}")
                return
            s.at = time.monotonic()
            self.unsent.remove(s)
            self.sent.append(s)

    def partitions(self) -> list[int]:
        return sorted(self.producer.partitions_for(self.topics.requests) or [0])

    # -- the job store ---------------------------------------------------------------------
    def refresh(self) -> None:
        cols = "id, state, reason, run_ref, work_dir, request_source, lease_owner"
        if self.has_attempts:
            cols += ", attempts"
        rows = self.store.rows(f"SELECT {cols} FROM jobs")
        self.jobs = {r["id"]: r for r in rows}
        for r in rows:
            ref = r["run_ref"]
            if isinstance(ref, str):
                ref = r["run_ref"] = json.loads(ref)
            if ref:
                self.modules.setdefault(r["id"], set()).add(str(ref.get("module")))
                if ref.get("pid"):
                    self.refs[(int(ref["pid"]), ref.get("started"))] = ref
            if (w := self.disk_watch.get(r["id"])) is not None:
                if r.get("attempts") is not None:
                    w.attempts.add(int(r["attempts"]))
                if ref and ref.get("pid") and int(ref["pid"]) != w.pid:
                    w.pids.add(int(ref["pid"]))

    def jobs_of(self, s: Sent) -> list[dict[str, Any]]:
        return [j for j in self.jobs.values() if j["request_source"] == s.source]

    def good_jobs(self, since: float = 0.0) -> list[dict[str, Any]]:
        return [j for s in self.sent if s.good and s.at >= since for j in self.jobs_of(s)]

    def dlq_of(self, s: Sent) -> list[Record]:
        """Dead letters carry the original bytes (and, so far, the original key)."""
        return [r for r in self.collector.records
                if r.topic == self.topics.dead_letter and (r.value == s.value or r.key == s.key)]

    def ingested(self, s: Sent) -> bool:
        return bool(self.jobs_of(s) or self.dlq_of(s) or self._stored_dead_letter(s))

    def _stored_dead_letter(self, s: Sent) -> bool:
        """A refusal the intake stored but has not forwarded yet (table `dead_letters`)."""
        if not self.has_dead_letters:
            return False
        return any(bytes(r["value"] or b"") == s.value
                   for r in self.store.rows("SELECT value FROM dead_letters"))

    # -- the loop --------------------------------------------------------------------------
    def tick(self) -> None:
        if not self.broker_down:
            self.collector.poll(100)
        self.refresh()
        for dead in self.fleet.reap():
            if dead.failpoints:  # armed: the fault that armed it judges how it ended
                continue
            self.violations.append(f"orchestrator {dead.name} exited by itself with code "
                                   f"{dead.proc.returncode}; see {dead.log}")
            self.say(self.violations[-1])
        if self.auto_fill and not self.broker_down:
            for o in self.fleet.fill(self.target):
                self.say(f"started orchestrator {o.name}")
        self.flush()
        if self.pumping and not self.broker_down:
            self.pump()

    def pump(self) -> None:
        active = [s for s in self.sent + self.unsent if s.good and not any(
            j["state"] in TERMINAL for j in self.jobs_of(s))]
        goods = sum(s.good for s in self.sent + self.unsent)
        if len(active) < self.args.concurrency and goods < 3 * self.args.faults + 4:
            s = self.request(GOOD)
            self.say(f"request {s.n}: good")
        now = time.monotonic()
        if now >= self.next_hostile:
            s = self.request(self.next_hostile_kind())
            self.say(f"request {s.n}: hostile {s.kind}")
            self.next_hostile = now + self.rng.uniform(15, 40)

    def wait(self, predicate: Callable[[], Any], limit: float) -> Any:
        return self.deadline.until(predicate, limit, between=self.tick)

    def pause(self, seconds: float) -> None:
        self.wait(lambda: False, seconds)

    def kill_orchestrator(self, o: Orchestrator) -> None:
        o.kill9()
        self.fleet.reap()

    # -- faults ----------------------------------------------------------------------------
    def inject(self, f: Fault) -> None:
        getattr(self, "fault_" + f.kind.replace(".", "_"))(f)
        if f.injected:
            f.at = self.deadline.elapsed()
        self.say(f"fault {f.n}/{len(self.faults)} {f.kind}: "
                 f"{'injected' if f.injected else 'NOT INJECTED'}; {'; '.join(f.notes)}")

    def _stage(self, state: str, module: str) -> Callable[[], dict[str, Any] | None]:
        def find() -> dict[str, Any] | None:
            for j in self.good_jobs():
                ref = j["run_ref"] or {}
                if j["state"] == state and ref.get("module") == module and run_alive(ref):
                    return j
            return None
        return find

    def _kill_stage(self, f: Fault, job: dict[str, Any], what: str) -> None:
        if kill_run(job["run_ref"]):
            f.injected, f.job = True, job["id"]
            f.notes.append(f"killed the {what} process group {job['run_ref']['pid']} of job "
                           f"{job['id'][:8]}")
        else:
            f.notes.append(f"the {what} process of job {job['id'][:8]} ended before the kill")

    def _training_step(self, job: dict[str, Any]) -> int:
        path = Path(job["work_dir"] or "/nonexistent") / PROGRESS_LOG
        try:
            lines = path.read_text(errors="replace").splitlines()
        except OSError:
            return 0
        for line in reversed(lines):
            try:
                p = json.loads(line)
            except ValueError:
                continue
            if p.get("stage") == "training":
                return int(p.get("step", 0))
        return 0

    def _mid_training(self, ahead: int) -> Callable[[], dict[str, Any] | None]:
        find = self._stage("training", "finetune.train")

        def mid() -> dict[str, Any] | None:
            job = find()
            return job if job and 1 <= self._training_step(job) < MAX_STEPS - ahead else None
        return mid

    def fault_orchestrator_kill9(self, f: Fault) -> None:
        self.wait(lambda: any(j["state"] in ("training", "evaluating")
                              for j in self.good_jobs()), 180)
        victims = self.fleet.alive()
        if not victims:
            f.notes.append("no orchestrator running")
            return
        victim = self.rng.choice(victims)
        self.kill_orchestrator(victim)
        f.injected = True
        f.notes.append(f"kill -9 {victim.name} (pid {victim.proc.pid})")
        self.pause(self.rng.uniform(0, 3))

    def _intake(self, f: Fault, trigger: str) -> None:
        self.auto_fill = False
        try:
            armed = self.fleet.start(f.kind)
            members = len(self.fleet.alive())
            group = self.env["AIF_CONSUMER_GROUP"]
            self.wait(lambda: not armed.alive or (
                armed.up() and self.broker.group_members(group) == members), 90)
            rounds = 0
            while armed.alive and rounds < 5 and not self.deadline.expired():
                rounds += 1
                for p in self.partitions():  # one record per partition: the armed one has some
                    self.request(trigger, partition=p)
                self.wait(lambda: not armed.alive, 20)
            self._fired(f, armed, f"{rounds} round(s) of {trigger} requests")
        finally:
            self.auto_fill = True

    def _fired(self, f: Fault, armed: Orchestrator, trigger: str) -> None:
        if armed.alive:
            f.notes.append(f"{armed.name} never reached the failpoint ({trigger})")
            armed.stop(30)
        elif armed.proc.returncode == -signal.SIGKILL:
            f.injected = True
            f.notes.append(f"{armed.name} killed itself at the failpoint ({trigger})")
        else:
            f.notes.append(f"{armed.name} exited with {armed.proc.returncode}, not at the "
                           f"failpoint; see {armed.log}")
        self.fleet.reap()

    def fault_intake_after_store(self, f: Fault) -> None:
        self._intake(f, "unknown-recipe")

    def fault_intake_after_commit(self, f: Fault) -> None:
        self._intake(f, "unknown-recipe")

    def fault_intake_after_dlq(self, f: Fault) -> None:
        self._intake(f, "random-bytes")

    def fault_relay_after_send(self, f: Fault) -> None:
        self.auto_fill = False
        try:
            armed = self.fleet.start(f.kind)
            self.wait(lambda: not armed.alive or armed.up(), 90)
            rounds = 0
            while armed.alive and rounds < 5 and not self.deadline.expired():
                rounds += 1
                self.request("unknown-recipe")  # its status events go through the outbox
                self.wait(lambda: not armed.alive, 15)
            self._fired(f, armed, f"{rounds} outbox trigger(s)")
        finally:
            self.auto_fill = True

    def _sole_armed(self, f: Fault) -> Orchestrator:
        """An armed orchestrator alone, so the next job to reach the point is its own."""
        self.auto_fill = False
        armed = self.fleet.start(f.kind)
        self.wait(lambda: not armed.alive or armed.up(), 90)
        for o in self.fleet.alive():
            if o is not armed:
                self.kill_orchestrator(o)
                self.incidental.append(f"kill -9 {o.name} to leave {armed.name} alone")
        return armed

    def fault_worker_before_handoff(self, f: Fault) -> None:
        try:
            armed = self._sole_armed(f)
            self.wait(lambda: not armed.alive, 480)
            self._fired(f, armed, "jobs passing the gate")
        finally:
            self.auto_fill = True

    def fault_checkpoint_before_rename(self, f: Fault) -> None:
        """The stage kills itself (it inherits AIF_FAILPOINTS); a complete but unrenamed
        checkpoint stays behind. The armed orchestrator goes, so retries run unarmed."""
        first_seen: dict[Path, float] = {}

        def leftover() -> Path | None:
            for j in self.good_jobs():
                for tmp in Path(j["work_dir"] or "/nonexistent").glob("checkpoints/.step-*.tmp"):
                    if (tmp / "COMPLETE").is_file():
                        seen = first_seen.setdefault(tmp, time.monotonic())
                        if time.monotonic() - seen > 0.5:
                            f.job = j["id"]
                            return tmp
            return None

        try:
            armed = self._sole_armed(f)
            found = self.wait(lambda: leftover() or not armed.alive, 480)
            if isinstance(found, Path):
                f.injected = True
                f.notes.append(f"stage of job {f.job[:8]} killed itself before renaming "
                               f"{found.name}")
            else:
                f.notes.append("no training stage reached a checkpoint save under "
                               f"{armed.name}" + ("" if armed.alive else " (it exited)"))
            if armed.alive:
                self.kill_orchestrator(armed)
                self.incidental.append(f"kill -9 {armed.name} to disarm it")
            self.fleet.reap()
        finally:
            self.auto_fill = True

    def fault_preflight_kill(self, f: Fault) -> None:
        since = time.monotonic()

        def passed_without_stage() -> dict[str, Any] | None:
            for j in self.good_jobs(since):
                if j["state"] != "validating" and "finetune.preflight" not in self.modules.get(
                        j["id"], set()):
                    return j
            return None

        find = self._stage("validating", "finetune.preflight")
        found = self.wait(lambda: find() or passed_without_stage(), 300)
        if found and found["state"] == "validating":
            self._kill_stage(f, found, "pre-flight")
        elif found:
            f.notes.append(f"job {found['id'][:8]} got past validating ({found['state']}) "
                           "without a pre-flight stage process (no run_ref with module "
                           "finetune.preflight)")
        else:
            f.notes.append("no pre-flight stage process seen")

    def fault_training_kill(self, f: Fault) -> None:
        job = self.wait(self._mid_training(ahead=2), 300)
        if job:
            step = self._training_step(job)
            self._kill_stage(f, job, f"training (step {step}/{MAX_STEPS})")
        else:
            f.notes.append("no training stage seen mid-training")

    def fault_evaluation_kill(self, f: Fault) -> None:
        delay = self.rng.uniform(1, 10)
        first_seen: dict[str, float] = {}
        find = self._stage("evaluating", "evaluation.run")

        def ripe() -> dict[str, Any] | None:
            job = find()
            if job is None:
                return None
            seen = first_seen.setdefault(job["id"], time.monotonic())
            return job if time.monotonic() - seen >= delay else None

        job = self.wait(ripe, 300)
        if job:
            self._kill_stage(f, job, f"evaluation ({delay:.1f}s in)")
        else:
            f.notes.append("no evaluation stage seen")

    def fault_disk_full(self, f: Fault) -> None:
        job = self.wait(self._mid_training(ahead=CHECKPOINT_STEPS + 1), 300)
        if not job:
            f.notes.append("no training stage with a checkpoint still ahead")
            return
        ref = job["run_ref"]
        self.disk_watch[job["id"]] = DiskWatch(pid=int(ref["pid"]))
        filled = self.disk.fill()
        f.injected, f.job = True, job["id"]
        f.notes.append(f"filled the jobs disk ({filled >> 20} MiB) at step "
                       f"{self._training_step(job)} of job {job['id'][:8]}")
        try:
            self.wait(lambda: not run_alive(ref) or self.jobs.get(job["id"], {}).get(
                "state") != "training", 90)
        finally:
            self.disk.free()
        log = Path(job["work_dir"]) / "training.log"
        hit = "No space left" in log.read_text(errors="replace") if log.is_file() else False
        f.notes.append(f"stage {'ended' if not run_alive(ref) else 'still running'} "
                       f"({'ENOSPC in its log' if hit else 'no ENOSPC in its log'}); freed")

    def fault_broker_restart(self, f: Fault) -> None:
        """Nothing outside the broker remembers unconsumed records, so wait for the intake
        first; freeze every producer while reading each partition to its end, then kill."""
        self.wait(lambda: all(self.ingested(s) for s in self.sent) and not self.unsent, 90)
        pending = [s for s in self.sent if not self.ingested(s)]
        self.fleet.freeze()
        try:
            caught = self.collector.catch_up(self.deadline, 30)
            self.broker.kill9()
            self.broker_down = True
        finally:
            self.fleet.thaw()
        self.collector.close()
        f.injected = True
        down = self.rng.uniform(3, 10)
        f.notes.append(f"kill -9 broker for {down:.1f}s (read to its end first: {caught}; "
                       f"{len(pending)} request(s) not yet taken in)")
        self.pause(down)
        self.broker.start()
        self.producer.close()
        self.producer = make_producer(self.broker.cfg)
        if not self.wait(lambda: self.broker.topics_exist(self.topics.shared()), 90):
            self.violations.append("the orchestrators did not recreate their topics within 90s "
                                   "of the broker restart")
        self.broker_down = False
        for s in pending:  # as a partner would: the same event again, safe by its id
            self.sent.remove(s)
            self.unsent.append(s)
            f.notes.append(f"re-sent request {s.n} ({s.kind})")
        self.flush()

    def fault_db_restart(self, f: Fault) -> None:
        self.wait(lambda: any(j["state"] in ("training", "evaluating")
                              for j in self.good_jobs()), 180)
        started = time.monotonic()
        self.pg.restart()
        f.injected = True
        f.notes.append(f"pg_ctlcluster restart took {time.monotonic() - started:.1f}s")

    # -- the end ---------------------------------------------------------------------------
    def settled(self) -> bool:
        if self.unsent or self.broker_down:
            return False
        if any(j["state"] not in TERMINAL for j in self.jobs.values()):
            return False
        if any(s.good and not self.jobs_of(s) for s in self.sent):
            return False
        if self.store.rows("SELECT count(*) AS n FROM outbox WHERE published_at IS NULL")[0]["n"]:
            return False
        last = max((s.at for s in self.sent), default=0.0)
        refused = all(self.refusals(s) for s in self.sent if not s.good)
        return refused or time.monotonic() - last > 90

    def refusals(self, s: Sent) -> int:
        dlq = {(r.headers.get("aif.dlq.partition"), r.headers.get("aif.dlq.offset"))
               if "aif.dlq.offset" in r.headers else (r.epoch, r.partition, r.offset)
               for r in self.dlq_of(s)}
        jobs = [j for j in self.jobs_of(s) if j["state"] in ("rejected", "failed") and j["reason"]]
        # A signed request refused at intake is a dead letter and a rejected job of its
        # tenant (one refusal told twice); one refused later is a rejected job alone.
        return max(len(dlq), len(jobs))

    def run(self) -> int:
        self.say(f"seed {self.args.seed}: {len(self.faults)} faults planned: "
                 + ", ".join(f.kind for f in self.faults))
        self.setup()
        for _ in HOSTILE:  # every hostile kind at least once, among the first jobs
            self.request(self.next_hostile_kind())
        self.next_hostile = time.monotonic() + 20
        for f in self.faults:
            if self.deadline.expired():
                f.notes.append("the global deadline passed first")
                continue
            self.inject(f)
            self.target = self.rng.choice([1, 2, 2])
            self.pause(self.rng.uniform(2, 8))
        self.pumping, self.target = False, 2
        self.say("all faults done; waiting for every request to end")
        if not self.wait(self.settled, max(self.deadline.left(), 0)):
            self.violations.append("the global deadline passed before every request ended")
        self.collector.catch_up(Deadline(60), 60)
        self.refresh()
        return self.report()

    def report(self) -> int:
        # Per job: CloudEvents ids and distinct payloads. The relay may send one outbox row
        # twice (same bytes, same id: consumers drop it); two rows for one fact differ in
        # their bytes even where the id is derived from the fact (`<job>:model-ready`).
        status: dict[str, dict[str, set[str]]] = {}
        status_bytes: dict[str, set[bytes]] = {}
        ready: dict[str, set[str]] = {}
        ready_bytes: dict[str, set[bytes]] = {}
        copies = Counter()
        for r in self.collector.records:
            if r.topic == self.topics.dead_letter:
                continue
            ev = r.event()
            job = (ev.get("data") or {}).get("job_id") or r.key or ""
            copies[(r.topic, ev.get("id"))] += 1
            if str(ev.get("type", "")).endswith(STATUS_SUFFIX):
                state = (ev.get("data") or {}).get("state", "")
                status.setdefault(job, {}).setdefault(state, set()).add(ev.get("id"))
                if state in TERMINAL:
                    status_bytes.setdefault(job, set()).add(r.value or b"")
            elif str(ev.get("type", "")).endswith(READY_SUFFIX):
                ready.setdefault(job, set()).add(ev.get("id"))
                ready_bytes.setdefault(job, set()).add(r.value or b"")
        resent = sum(n - 1 for n in copies.values() if n > 1)
        transitions = Counter(
            r["job_id"] for r in self.store.rows("SELECT job_id, to_state FROM job_transitions")
            if r["to_state"] in TERMINAL)
        lost: list[str] = []
        doubled: list[str] = []
        other = self.violations

        for s in self.sent:
            jobs = self.jobs_of(s)
            label = f"request {s.n} ({s.kind}"
            if s.good:
                if not jobs:
                    lost.append(f"{label}, job {s.key}): no job")
                    continue
                if len(jobs) > 1:
                    doubled.append(f"{label}): {len(jobs)} jobs")
                for j in jobs:
                    lbl = f"{label}, job {j['id']})"
                    terminal_events = max(
                        sum(len(ids) for st, ids in status.get(j["id"], {}).items()
                            if st in TERMINAL),
                        len(status_bytes.get(j["id"], set())))
                    n_ready = max(len(ready.get(j["id"], set())),
                                  len(ready_bytes.get(j["id"], set())))
                    if j["state"] not in TERMINAL:
                        lost.append(f"{lbl}: never ended, still {j['state']}: {j['reason']!r}")
                    elif terminal_events == 0:
                        lost.append(f"{lbl}: ended {j['state']} but no terminal status event "
                                    "was published")
                    if transitions[j["id"]] > 1 or terminal_events > 1:
                        doubled.append(f"{lbl}: {transitions[j['id']]} terminal transitions, "
                                       f"{terminal_events} terminal status events")
                    if n_ready > 1:
                        doubled.append(f"{lbl}: model.ready {len(ready.get(j['id'], ()))} "
                                       f"id(s), {len(ready_bytes.get(j['id'], ()))} distinct "
                                       "payload(s)")
                    if j["state"] == "succeeded" and n_ready == 0:
                        lost.append(f"{lbl}: succeeded without a model.ready event")
                    if j["state"] != "succeeded" and n_ready:
                        other.append(f"{lbl}: model.ready, yet it ended {j['state']}")
            else:
                n = self.refusals(s)
                for j in jobs:
                    if j["state"] not in TERMINAL:
                        other.append(f"{label}, job {j['id']}): never ended, still "
                                     f"{j['state']}: {j['reason']!r}")
                    elif j["state"] not in ("rejected", "failed") or not j["reason"]:
                        other.append(f"{label}, job {j['id']}): accepted, ended {j['state']}")
                    if ready.get(j["id"]):
                        other.append(f"{label}, job {j['id']}): a model.ready event")
                if n == 0:
                    lost.append(f"{label}): no refusal (no dead letter, no job refused)")
                elif n > 1:
                    doubled.append(f"{label}): {n} refusals")

        known = {j["id"] for s in self.sent for j in self.jobs_of(s)}
        for j in self.jobs.values():
            if j["id"] not in known:
                other.append(f"job {j['id']} from {j['request_source']} matches no request")
        pending = self.store.rows("SELECT count(*) AS n FROM outbox WHERE published_at IS NULL")
        if pending[0]["n"]:
            other.append(f"outbox: {pending[0]['n']} row(s) never published")
        for f in self.faults:
            if not f.injected:
                other.append(f"fault {f.n} {f.kind} not injected: {'; '.join(f.notes)}")
        for job_id, w in self.disk_watch.items():
            j = self.jobs.get(job_id, {})
            retried = bool(w.pids) or max(w.attempts, default=0) >= 1
            print(f"disk.full, job {job_id[:8]}: attempts seen {sorted(w.attempts)}, "
                  f"{len(w.pids)} new stage run(s), ended {j.get('state')}")
            if not retried:
                other.append(f"disk.full, job {job_id}: not retried (attempts seen "
                             f"{sorted(w.attempts)}, no new stage run); ended "
                             f"{j.get('state')}: {j.get('reason', '')!r}")

        self.print_report(lost, doubled, other, resent)
        return 1 if lost or doubled or other else 0

    def print_report(self, lost: list[str], doubled: list[str], other: list[str],
                     resent: int) -> None:
        planned = Counter(f.kind for f in self.faults)
        injected = Counter(f.kind for f in self.faults if f.injected)
        goods = [s for s in self.sent if s.good]
        hostile = Counter(s.kind for s in self.sent if not s.good)
        states = Counter(j["state"] for j in self.jobs.values())
        good_states = Counter(j["state"] for s in goods for j in self.jobs_of(s))
        print("\nfaults, in order:")
        for f in self.faults:
            print(f"  {f.n:2} {f.kind:26} {'injected' if f.injected else 'NOT INJECTED'} "
                  f"at {f.at:6.0f}s: {'; '.join(f.notes)}")
        print("faults injected by kind (injected/planned):")
        for kind in FAULTS:
            if planned[kind]:
                print(f"  {kind:26} {injected[kind]}/{planned[kind]}")
        if self.incidental:
            print(f"  incidental kills: {len(self.incidental)} (" + "; ".join(self.incidental)
                  + ")")
        print(f"requests sent: good {len(goods)}, hostile {sum(hostile.values())} ("
              + ", ".join(f"{k} {v}" for k, v in sorted(hostile.items())) + ")")
        print("good jobs ended: " + ", ".join(f"{k} {v}" for k, v in sorted(good_states.items())))
        for s in goods:
            for j in self.jobs_of(s):
                if j["state"] != "succeeded":
                    print(f"  good job {j['id'][:8]} {j['state']}: "
                          f"{(j['reason'] or '').splitlines()[:1]}")
        for title, items in (("LOST", lost), ("DOUBLED", doubled), ("VIOLATION", other)):
            for item in items:
                print(f"{title}: {item}")
        rows = [
            ("faults injected", f"{sum(injected.values())} of {len(self.faults)}"),
            ("jobs", f"{len(self.jobs)} (" + ", ".join(
                f"{k} {v}" for k, v in sorted(states.items())) + ")"),
            ("lost", str(len(lost))),
            ("doubled", str(len(doubled))),
            ("other violations", str(len(other))),
            ("re-sent copies, same id", str(resent)),
            ("wall time", f"{self.deadline.elapsed():.0f} s"),
        ]
        print("\n| figure | value |\n|---|---|")
        for name, value in rows:
            print(f"| {name} | {value} |")
        print("\nPASS" if not (lost or doubled or other) else "\nFAIL", f"(logs: {self.work})")

    def _teardown_partial(self) -> None:
        """Setup failed half-way: undo what it did."""
        for name in ("broker", "disk", "pg"):
            part = getattr(self, name, None)
            if part is not None:
                getattr(part, {"broker": "stop", "disk": "unmount", "pg": "drop"}[name])()

    def teardown(self) -> None:
        if not hasattr(self, "fleet"):
            return self._teardown_partial()
        for step in (lambda: self.fleet.stop_all(),
                     lambda: [kill_run(ref) for ref in self.refs.values()],
                     lambda: self.collector.close(),
                     lambda: self.producer and self.producer.close(),
                     lambda: self.broker.stop(),
                     lambda: self.disk.unmount(),
                     lambda: self.pg.drop()):
            try:
                step()
            except Exception as exc:
                print(f"teardown: {exc!r}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--faults", type=int, default=20)
    parser.add_argument("--deadline-min", type=float, default=40.0,
                        help="global bound on the whole run, minutes")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="logs and job directories (default: a new temporary directory)")
    parser.add_argument("--model", type=Path, default=None,
                        help="a tiny model directory to reuse (built if absent)")
    parser.add_argument("--kinds", default="",
                        help=f"comma-separated faults to inject in this order instead of a "
                        f"seeded plan; kinds: {', '.join(FAULTS)}")
    parser.add_argument("--concurrency", type=int, default=2, help="good jobs in flight")
    parser.add_argument("--lease-s", type=float, default=5.0)
    parser.add_argument("--disk-mb", type=int, default=256, help="size of the jobs tmpfs")
    args = parser.parse_args(argv)
    unknown = set(filter(None, args.kinds.split(","))) - set(FAULTS)
    if unknown:
        parser.error(f"unknown fault kinds {sorted(unknown)}")
    if os.geteuid() != 0:
        print("chaos: needs root (tmpfs mount, private PostgreSQL cluster)", file=sys.stderr)
        return 2
    if shutil.which("pg_createcluster") is None:
        print("chaos: needs PostgreSQL (apt-get install postgresql)", file=sys.stderr)
        return 2
    args.workdir = args.workdir or Path(tempfile.mkdtemp(prefix=f"aif-chaos-{args.seed}-"))
    for name, value in (("HF_HUB_OFFLINE", "1"), ("HF_DATASETS_OFFLINE", "1"),
                        ("TOKENIZERS_PARALLELISM", "false")):
        os.environ.setdefault(name, value)
    chaos = Chaos(args)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(3))
    try:
        return chaos.run()
    finally:
        chaos.teardown()


if __name__ == "__main__":
    sys.exit(main())
