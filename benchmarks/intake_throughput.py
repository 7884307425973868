"""Intake throughput and latency against the embedded broker.

    .venv/bin/python -m benchmarks.intake_throughput [--events 5000] [--rate 50] [--db-url URL]

Throughput: events/s through validate + store + offset commit, next to a baseline that only
consumes the same records with kafka-python (the ceiling set by client and broker).
Latency: requests produced at a steady rate; time from the producer's send to the job's
commit in the store (state `validating`, status event in the outbox), p50 and p99.
Targets: >= 1,000 events/s on SQLite and >= 500 on PostgreSQL (issue 28); p99 < 1 s at 50
events/s (issue 3). Every request is signed by tenant `bench`, so the figures include
verifying the signatures; the intake is built as the service builds it (admission with the
site's default quota limits and reference rules, a topic keeper), and each accepted request
writes its job, transition, status event and two audit rows.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

from sqlalchemy import make_url, select

from aif.broker import EmbeddedBroker
from aif.db.models import Job, Tenant
from aif.db.session import session_factory
from aif.orchestrator.kafka_intake import Intake
from aif.orchestrator.references import References
from aif.settings import Settings
from aif.tenants import add_signing_key, create_tenant
from benchmarks.machine import write_results
from events.bus import (
    KafkaConfig,
    TopicKeeper,
    ensure_topics,
    envelope,
    make_consumer,
    make_producer,
)
from events.messages import FineTuneRequested
from events.signing import SigningKey, sign
from events.topics import Topics
from tests.conftest import free_port

GROUP = {"max_poll_interval_ms": 3000, "session_timeout_ms": 3000, "heartbeat_interval_ms": 500}


def _bench_key(db_url: str) -> SigningKey:
    """A signing key of tenant `bench` in the job store, creating the tenant if missing."""
    with session_factory(db_url)() as s:
        if s.get(Tenant, "bench") is None:
            created = create_tenant(s, "bench")
            key = SigningKey(created.signing_key_id, created.signing_secret)
        else:
            key = SigningKey(*add_signing_key(s, "bench"))
        s.commit()
    return key


def _produce(cfg: KafkaConfig, topic: str, n: int, key: SigningKey, rate: float | None = None,
             source: str = "urn:bench") -> dict[str, float]:
    """Send n signed requests (at `rate`/s if given); returns event id -> send time (epoch s)."""
    producer = make_producer(cfg)
    data = FineTuneRequested(recipe="grid-ticket-routing")
    sent: dict[str, float] = {}
    start = time.monotonic()
    for i in range(n):
        if rate:
            time.sleep(max(0.0, start + i / rate - time.monotonic()))
        event = envelope(data, source=source, tenant="bench")
        sent[event.id] = time.time()
        value = event.to_bytes()
        producer.send(topic, key=event.id.encode(), value=value,
                      headers=sign(value, key.id, key.secret))
    producer.flush()
    producer.close()
    return sent


def baseline_consume(cfg: KafkaConfig, topic: str, n: int) -> float:
    consumer = make_consumer(cfg, topic, group_id=f"base-{uuid.uuid4().hex[:6]}", **GROUP)
    got, start = 0, None
    while got < n:
        batch = consumer.poll(timeout_ms=500, max_records=500)
        if batch and start is None:
            start = time.monotonic()
        got += sum(len(r) for r in batch.values())
        if batch:
            consumer.commit()
    elapsed = time.monotonic() - (start or time.monotonic())
    consumer.close()
    return n / elapsed


def _intake(cfg: KafkaConfig, topics: Topics, db_url: str) -> Intake:
    """Built as `aif.service` builds it: the site's admission (default quota limits and
    data-reference rules, so each request is screened as the service screens it) and a topic
    keeper that makes sure of the tenant's topics after each poll."""
    settings = Settings(home=Path(tempfile.mkdtemp(prefix="aif-bench-home-")))
    consumer = make_consumer(cfg, group_id=f"{topics.prefix}-orch", **GROUP)
    keeper = TopicKeeper(cfg, topics.shared())
    return Intake(consumer, make_producer(cfg), session_factory(db_url), topics,
                  ensure_topics=keeper.ensure, references=References.of(settings),
                  quota_defaults=settings.quota_defaults)


def intake_throughput(cfg: KafkaConfig, topics: Topics, db_url: str, n: int) -> float:
    intake = _intake(cfg, topics, db_url)
    done, start = 0, None
    while done < n:
        results = intake.poll_once()
        if results and start is None:
            start = time.monotonic()
        done += len(results)
    elapsed = time.monotonic() - (start or time.monotonic())
    intake.consumer.close()
    return n / elapsed


def intake_latency(cfg: KafkaConfig, topics: Topics, db_url: str, rate: float,
                   seconds: float) -> list[float]:
    intake = _intake(cfg, topics, db_url)
    thread = threading.Thread(target=intake.run, daemon=True)
    thread.start()
    while not intake.consumer.assignment():  # let the group settle before the clock starts
        time.sleep(0.1)
    sent = _produce(cfg, topics.requests, int(rate * seconds), _bench_key(db_url), rate,
                    "urn:bench-latency")
    sessions = session_factory(db_url)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        with sessions() as s:
            rows = s.execute(select(Job.request_id, Job.created_at)
                             .where(Job.request_source == "urn:bench-latency")).all()
        if len(rows) >= len(sent):
            break
        time.sleep(0.5)
    intake.stopping.set()
    thread.join()
    intake.consumer.close()
    return sorted(created.timestamp() - sent[rid] for rid, created in rows if rid in sent)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=5000)
    parser.add_argument("--rate", type=float, default=50.0)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--db-url", help="SQLAlchemy URL; a fresh SQLite file by default")
    args = parser.parse_args()

    load = os.getloadavg()
    tmp = Path(tempfile.mkdtemp(prefix="aif-bench-"))
    bootstrap = f"127.0.0.1:{free_port()}"
    broker = EmbeddedBroker(bootstrap, tmp / "broker.log")
    broker.start()
    try:
        cfg = KafkaConfig(bootstrap_servers=bootstrap)
        db_url = args.db_url or f"sqlite:///{tmp / 'bench.db'}"
        topics = Topics("bench")
        ensure_topics(cfg, topics.shared())
        _produce(cfg, topics.requests, args.events, _bench_key(db_url))
        base = baseline_consume(cfg, topics.requests, args.events)
        ours = intake_throughput(cfg, topics, db_url, args.events)
        print(f"throughput: intake {ours:.0f} events/s; kafka-python consume-only baseline "
              f"{base:.0f} events/s; ratio {ours / base:.2f} (target >= 1000 events/s on SQLite, "
              ">= 500 on PostgreSQL)")

        latency_topics = Topics("lat")
        ensure_topics(cfg, latency_topics.shared())
        lat_db = args.db_url or f"sqlite:///{tmp / 'latency.db'}"
        lat = intake_latency(cfg, latency_topics, lat_db, args.rate, args.seconds)
        p50 = statistics.median(lat)
        p99 = lat[min(len(lat) - 1, int(0.99 * len(lat)))]
        print(f"latency at {args.rate:.0f} events/s over {len(lat)} requests: "
              f"p50 {p50 * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms (target p99 < 1000 ms)")
        store = make_url(db_url).get_backend_name()
        path = write_results(f"intake_throughput_{store}", {
            "store": store, "events": args.events, "intake_events_per_s": ours,
            "consume_only_events_per_s": base, "ratio": ours / base, "latency_rate": args.rate,
            "latency_requests": len(lat), "latency_p50_s": p50, "latency_p99_s": p99,
        }, load, "python -m benchmarks.intake_throughput " + " ".join(  # no password kept
            make_url(a).render_as_string(hide_password=True) if a == args.db_url else a
            for a in sys.argv[1:]))
        print(f"results in {path}")
    finally:
        broker.stop()


if __name__ == "__main__":
    main()
