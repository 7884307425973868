"""The web app's way onto Kafka: the requests topic it publishes to, and the broker check of
`/readyz`.

Built on first use, not with the app, so the app starts and `/healthz` answers while the
broker is away; a failed connection is tried again on the next call. Its admin connection
gives up within seconds (kafka-python's default waits 30 s to bootstrap), so a probe or a
submission while the broker is away is answered quickly.
"""

from __future__ import annotations

import threading

from kafka import KafkaAdminClient, KafkaProducer

from events.bus import ACK_WAIT_S, KafkaConfig, make_producer

PROBE_TIMEOUT_MS = 3000


class BrokerUnavailable(RuntimeError):
    """The broker does not answer, or lacks the requests topic; the message says which."""


class RequestBus:
    def __init__(self, cfg: KafkaConfig, topic: str, producer: KafkaProducer | None = None
                 ) -> None:
        self.cfg, self.topic = cfg, topic
        self._producer, self._owns_producer = producer, producer is None
        self._admin: KafkaAdminClient | None = None
        # The admin client is not thread-safe: the lock serialises its round trips.
        self._lock = threading.Lock()

    def ready(self) -> None:
        """One metadata round trip. The requests topic must exist: a memory-only broker that
        restarted acks records for a topic it forgot, and drops them; the orchestrator
        recreates its topics within seconds, and until then nothing is sent."""
        with self._lock:
            try:
                if self._admin is None:
                    self._admin = KafkaAdminClient(**self.cfg.client_kwargs(),
                                                   bootstrap_timeout_ms=PROBE_TIMEOUT_MS,
                                                   request_timeout_ms=PROBE_TIMEOUT_MS)
                topics = self._admin.list_topics()
            except Exception as exc:
                self._close_admin()  # start from a fresh connection next time
                raise BrokerUnavailable(f"broker unreachable: {type(exc).__name__}") from exc
        if self.topic not in topics:
            raise BrokerUnavailable("the requests topic does not exist (yet)")

    def publish(self, value: bytes, key: str, headers: list[tuple[str, bytes]]) -> None:
        """Send and wait for the ack. Waiting the full delivery timeout makes a failure here
        final: the record will not appear later."""
        self.ready()
        with self._lock:
            if self._producer is None:
                self._producer = make_producer(self.cfg)
            producer = self._producer
        producer.send(self.topic, key=key.encode(), value=value,
                      headers=headers).get(timeout=ACK_WAIT_S)

    def _close_admin(self) -> None:
        if self._admin is not None:
            self._admin.close()
            self._admin = None

    def close(self) -> None:
        with self._lock:
            self._close_admin()
            if self._owns_producer and self._producer is not None:
                self._producer.close()
                self._producer = None
