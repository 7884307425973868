"""Accepted -> training process started, on an idle local launcher, with the pre-flight's share.

    .venv/bin/python -m benchmarks.start_latency [--requests 20] [--recipe grid-ticket-routing]

Each request is stored as intake stores it (SQLite job store in a temporary home), then a
real worker drives it: the effective recipe, the pre-flight stage process (report, estimate,
the tokenizer from the GGUF metadata cache), the move to `training` and the launch of the
training stage. The clock stops when the worker has recorded the started training process;
that process is stopped at once and the next request follows, so the system is idle for
each. The first request meets a cold tokenizer cache (the GGUF is read once); the others a
warm one. Figures: p50 and p95 over the requests, each split into the time until the job
was `queued` (mostly the pre-flight) and the rest. Target (issue 16): p50 < 5 s.
Results go to `benchmarks/results/start_latency.json`.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

from sqlalchemy.orm import Session, sessionmaker

from aif.db.models import Job
from aif.db.session import session_factory
from aif.jobstore.transitions import transition
from aif.launchers import get_launcher, stop
from aif.orchestrator.intake import accept
from aif.orchestrator.worker import JobWorker
from aif.settings import Settings
from aif.tenants import create_tenant
from benchmarks.machine import write_results
from events.bus import envelope
from events.messages import FineTuneRequested
from events.states import JobState

TRAINING = "finetune.train"


def one_request(settings: Settings, sessions: sessionmaker[Session], recipe: str,
                n: int) -> dict[str, float]:
    raw = envelope(FineTuneRequested(recipe=recipe), source="urn:bench:latency",
                   tenant="bench", event_id=f"req-{n}").to_bytes()
    with sessions() as session:
        job_id = accept(session, raw, settings.topics, require_signed=False).job_id
        session.commit()
    accepted = time.time()
    worker = JobWorker(settings, sessions, get_launcher("local"))
    assert worker.leases.claim() == job_id
    thread = threading.Thread(target=worker.run_job, args=(job_id,), daemon=True)
    thread.start()
    queued = None
    while True:
        job = worker.load(job_id)
        if queued is None and job.state != JobState.validating:
            queued = time.time()
        if job.run_ref and job.run_ref.get("module") == TRAINING:
            break
        if JobState(job.state).terminal:
            raise SystemExit(f"request {n}: ended {job.state}: {job.reason}")
        time.sleep(0.02)
    started = float(job.run_ref["started_at"])
    worker.stopping.set()
    stop(get_launcher("local").attach(job.run_ref))
    thread.join(timeout=60)
    with sessions() as session:  # ended, so the next request's worker claims the next job
        transition(session, session.get_one(Job, job_id), JobState.cancelled, settings.topics,
                   "benchmark: training started")
        session.commit()
    return {"total_s": started - accepted, "to_queued_s": queued - accepted,
            "queued_to_started_s": started - queued}


def _p(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[round(q) - 1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=20)
    parser.add_argument("--recipe", default="grid-ticket-routing")
    args = parser.parse_args()

    load = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(home=Path(tmp), launcher="local")  # type: ignore[call-arg]
        sessions = session_factory(settings.db_url)
        with sessions() as session:
            create_tenant(session, "bench")
            session.commit()
        runs = []
        for n in range(args.requests):
            runs.append(one_request(settings, sessions, args.recipe, n))
            print(f"request {n + 1}: {runs[-1]['total_s']:.2f} s (pre-flight until queued "
                  f"{runs[-1]['to_queued_s']:.2f} s)", flush=True)
    figures = {}
    for key in ("total_s", "to_queued_s", "queued_to_started_s"):
        values = [r[key] for r in runs]
        figures[key] = {"p50": statistics.median(values), "p95": _p(values, 95),
                        "first": values[0], "max": max(values)}
    share = figures["to_queued_s"]["p50"] / figures["total_s"]["p50"]
    print(f"accepted -> training started over {args.requests} requests: p50 "
          f"{figures['total_s']['p50']:.2f} s, p95 {figures['total_s']['p95']:.2f} s "
          f"(first, cold cache: {figures['total_s']['first']:.2f} s); pre-flight share of "
          f"p50 {share:.0%} (target p50 < 5 s)")
    path = write_results("start_latency", {
        "recipe": args.recipe, "requests": args.requests, "launcher": "local",
        "preflight_share_of_p50": share, **figures,
    }, load, "python -m benchmarks.start_latency " + " ".join(sys.argv[1:]))
    print(f"results in {path}")


if __name__ == "__main__":
    main()
