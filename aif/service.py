"""Assemble and run the service: broker (embedded if needed), intake, workers, relay, web."""

from __future__ import annotations

import logging
import os
import threading
from contextlib import AbstractContextManager
from types import TracebackType
from wsgiref.simple_server import WSGIServer

import uvicorn
from prometheus_client import start_http_server
from sqlalchemy.orm import Session, sessionmaker
from tenacity import retry, stop_after_delay, wait_fixed

from aif import redaction
from aif.broker import EmbeddedBroker, ensure_broker
from aif.db.session import session_factory
from aif.launchers import get_launcher
from aif.metrics import ConsumerLagCollector, JobStoreCollector, registry
from aif.orchestrator.kafka_intake import Intake
from aif.orchestrator.references import References
from aif.orchestrator.relay import OutboxRelay
from aif.orchestrator.worker import JobWorker
from aif.settings import Settings
from aif.storage import PRIVATE_UMASK
from aif.web.app import create_app
from events.bus import TopicKeeper, make_consumer, make_producer

log = logging.getLogger(__name__)


class Service(AbstractContextManager["Service"]):
    def __init__(self, settings: Settings, *, web: bool = True,
                 orchestrator: bool = True) -> None:
        """`web` / `orchestrator` False leave that part out: on Kubernetes each runs in
        Deployments of its own."""
        self.settings, self.web, self.orchestrator = settings, web, orchestrator
        self.broker: EmbeddedBroker | None = None
        self.threads: list[threading.Thread] = []
        self.stoppables: list[object] = []
        self.server: uvicorn.Server | None = None
        self.metrics_server: WSGIServer | None = None
        self.lag: ConsumerLagCollector | None = None

    @retry(stop=stop_after_delay(30), wait=wait_fixed(0.5), reraise=True)
    def _topics(self, keeper: TopicKeeper) -> None:
        keeper.ensure()

    def _start_orchestrator(self, sessions: sessionmaker[Session]) -> None:
        s = self.settings
        self.broker = ensure_broker(s.kafka.bootstrap_servers, s.embedded_broker,
                                    s.home / "broker.log")
        keepers = [TopicKeeper(s.kafka, s.topics.shared()) for _ in range(2)]  # one per thread
        self._topics(keepers[0])
        producer = make_producer(s.kafka, auto_create_topics=False)  # the keepers create them
        consumer = make_consumer(
            s.kafka, group_id=s.consumer_group,
            max_poll_interval_ms=s.max_poll_interval_ms,
            session_timeout_ms=s.session_timeout_ms,
            heartbeat_interval_ms=max(200, s.session_timeout_ms // 5),
            metadata_max_age_ms=5000,  # notice a recreated requests topic within seconds
        )
        self.producer, self.consumer, self.keepers = producer, consumer, keepers
        launcher = get_launcher(s.launcher, s)
        intake = Intake(consumer, producer, sessions, s.topics, ensure_topics=keepers[0].ensure,
                        max_processes=launcher.max_processes,
                        require_signed_events=s.require_signed_events,
                        references=References.of(s), quota_defaults=s.quota_defaults)
        relay = OutboxRelay(sessions, producer, ensure_topics=keepers[1].ensure)
        workers = [JobWorker(s, sessions, launcher) for _ in range(s.worker_slots)]
        self.stoppables = [intake, relay, *workers]
        self.admission = intake.admission  # the web's front door checks what intake checks
        if s.metrics_port is not None:
            self.lag = ConsumerLagCollector(s.kafka, s.consumer_group, s.topics.requests)
            self.metrics_server, _ = start_http_server(
                s.metrics_port, s.web_host, registry(JobStoreCollector(sessions), self.lag))
        for name, target in [("intake", intake.run), ("relay", relay.run)] + [
            (w.owner, w.run) for w in workers
        ]:
            t = threading.Thread(target=target, name=name, daemon=True)
            t.start()
            self.threads.append(t)

    def start(self) -> Service:
        s = self.settings
        redaction.install(s)  # before any client is built: kafka-python logs its settings
        # Job folders, specs, uploads and the SQLite file are the service user's alone.
        self._umask = os.umask(PRIVATE_UMASK)
        s.home.mkdir(parents=True, exist_ok=True)
        sessions = session_factory(s.db_url)
        if self.orchestrator:
            self._start_orchestrator(sessions)
        if self.web:
            app = create_app(sessions, s, getattr(self, "producer", None))
            if self.orchestrator:  # the launcher's process limit too, known here
                app.state.admission = self.admission
            config = uvicorn.Config(app, host=s.web_host,
                                    port=s.web_port, log_level="warning")
            self.server = uvicorn.Server(config)
            t = threading.Thread(target=self.server.run, name="web", daemon=True)
            t.start()
            self.threads.append(t)
        return self

    @property
    def url(self) -> str:
        return f"http://{self.settings.web_host}:{self.settings.web_port}/leaderboard"

    def stop(self) -> None:
        for part in self.stoppables:
            part.stopping.set()  # type: ignore[attr-defined]
        if self.server is not None:
            self.server.should_exit = True
        if self.metrics_server is not None:
            self.metrics_server.shutdown()
        for t in self.threads:
            t.join(timeout=30)
        for closer in (getattr(self, "consumer", None), getattr(self, "producer", None),
                       *getattr(self, "keepers", []), self.lag):
            if closer is not None:
                closer.close()
        if self.broker is not None:
            self.broker.stop()
        if (umask := getattr(self, "_umask", None)) is not None:
            os.umask(umask)

    def __enter__(self) -> Service:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
