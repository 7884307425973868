"""Assemble and run the service: broker (embedded if needed), intake, workers, relay, web."""

from __future__ import annotations

import logging
import os
import threading
from contextlib import AbstractContextManager
from types import TracebackType

import uvicorn
from tenacity import retry, stop_after_delay, wait_fixed

from aif.broker import EmbeddedBroker, ensure_broker
from aif.db.session import session_factory
from aif.launchers import get_launcher
from aif.orchestrator.intake import Intake
from aif.orchestrator.references import References
from aif.orchestrator.relay import OutboxRelay
from aif.orchestrator.worker import JobWorker
from aif.settings import Settings
from aif.storage import PRIVATE_UMASK
from aif.web.app import create_app
from events import redaction
from events.bus import TopicKeeper, make_consumer, make_producer

log = logging.getLogger(__name__)


class Service(AbstractContextManager["Service"]):
    def __init__(self, settings: Settings, *, web: bool = True) -> None:
        self.settings, self.web = settings, web
        self.broker: EmbeddedBroker | None = None
        self.threads: list[threading.Thread] = []
        self.stoppables: list[object] = []
        self.server: uvicorn.Server | None = None

    @retry(stop=stop_after_delay(30), wait=wait_fixed(0.5), reraise=True)
    def _topics(self, keeper: TopicKeeper) -> None:
        keeper.ensure()

    def start(self) -> Service:
        s = self.settings
        redaction.install(s)  # before any client is built: kafka-python logs its settings
        # Job folders, specs, uploads and the SQLite file are the service user's alone.
        self._umask = os.umask(PRIVATE_UMASK)
        s.home.mkdir(parents=True, exist_ok=True)
        self.broker = ensure_broker(s.kafka.bootstrap_servers, s.embedded_broker,
                                    s.home / "broker.log")
        keepers = [TopicKeeper(s.kafka, s.topics.shared()) for _ in range(2)]  # one per thread
        self._topics(keepers[0])
        sessions = session_factory(s.db_url)
        producer = make_producer(s.kafka)
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
                        references=References.of(s))
        relay = OutboxRelay(sessions, producer, ensure_topics=keepers[1].ensure)
        workers = [JobWorker(s, sessions, launcher) for _ in range(s.worker_slots)]
        self.stoppables = [intake, relay, *workers]
        for name, target in [("intake", intake.run), ("relay", relay.run)] + [
            (w.owner, w.run) for w in workers
        ]:
            t = threading.Thread(target=target, name=name, daemon=True)
            t.start()
            self.threads.append(t)
        if self.web:
            config = uvicorn.Config(create_app(sessions, s, producer), host=s.web_host,
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
        for t in self.threads:
            t.join(timeout=30)
        for closer in (getattr(self, "consumer", None), getattr(self, "producer", None),
                       *getattr(self, "keepers", [])):
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
