"""kafka-python producers and consumers built from one config, security settings included."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable
from typing import Any, Literal, NamedTuple

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
from kafka.admin import NewTopic
from kafka.errors import TopicAlreadyExistsError
from pydantic import BaseModel, ConfigDict, SecretStr

from events.envelope import CloudEvent
from events.messages import EventData
from events.signing import SigningKey, sign

log = logging.getLogger(__name__)


class KafkaConfig(BaseModel):
    """Connection settings; the security fields pass straight through to kafka-python."""

    model_config = ConfigDict(extra="forbid")

    bootstrap_servers: str = "127.0.0.1:19092"
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    sasl_plain_username: str | None = None
    sasl_plain_password: SecretStr | None = None
    ssl_cafile: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    client_id: str = "aif-tuning"

    def client_kwargs(self) -> dict[str, Any]:
        kw: dict[str, Any] = {
            "bootstrap_servers": self.bootstrap_servers.split(","),
            "security_protocol": self.security_protocol,
            "client_id": self.client_id,
        }
        for name in ("sasl_mechanism", "sasl_plain_username", "ssl_cafile", "ssl_certfile",
                     "ssl_keyfile"):
            if (value := getattr(self, name)) is not None:
                kw[name] = value
        if self.sasl_plain_password is not None:
            kw["sasl_plain_password"] = self.sasl_plain_password.get_secret_value()
        return kw


DELIVERY_TIMEOUT_S = 30
"""Every send resolves within this: acked, or failed and never to be sent later."""
ACK_WAIT_S = DELIVERY_TIMEOUT_S + 10


def make_producer(cfg: KafkaConfig, *, auto_create_topics: bool = True) -> KafkaProducer:
    """Durable settings: wait for all replicas, keep per-key order on retry.

    Waiting on a send for less than the delivery timeout leaves the record queued; a caller
    that then sends it again would publish it twice. So callers wait with `ACK_WAIT_S`.

    A producer whose topics a `TopicKeeper` creates passes `auto_create_topics=False`: its
    metadata requests would otherwise also create them, and the embedded broker, asked to
    create a topic twice at once after a restart, has been seen to drop records acked in
    between.
    """
    return KafkaProducer(
        allow_auto_create_topics=auto_create_topics,
        acks="all",
        delivery_timeout_ms=DELIVERY_TIMEOUT_S * 1000,
        request_timeout_ms=DELIVERY_TIMEOUT_S * 1000 // 2,
        max_in_flight_requests_per_connection=1,
        # Consumers de-duplicate by CloudEvents id; an idempotent producer cannot survive a
        # memory-only broker restart (its producer id is gone) and would need rebuilding.
        enable_idempotence=False,
        linger_ms=5,
        max_block_ms=10_000,  # fail fast while the broker is away; callers retry
        **cfg.client_kwargs(),
    )


class Outgoing(NamedTuple):
    topic: str
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]] | None = None


def send_and_wait(producer: KafkaProducer,
                  records: Iterable[Outgoing]) -> tuple[list[bool], Exception | None]:
    """Send records in order and wait for every queued one to resolve.

    Returns one flag per record that was queued (acked or not) and the first failure. A send
    that raises (no metadata within max_block_ms, a record over the size limit) stops the
    batch there, so later records keep their order; the ones queued before it are still waited
    for, because a caller that re-sent a record still queued in the producer would publish it
    twice.
    """
    futures, first_error = [], None
    for r in records:
        try:
            futures.append(producer.send(r.topic, key=r.key, value=r.value, headers=r.headers))
        except Exception as exc:
            first_error = exc
            break
    acked = []
    for future in futures:
        try:
            future.get(timeout=ACK_WAIT_S)
            acked.append(True)
        except Exception as exc:
            acked.append(False)
            first_error = first_error or exc
    return acked, first_error


def make_consumer(cfg: KafkaConfig, *topics: str, **overrides: Any) -> KafkaConsumer:
    kw: dict[str, Any] = {"enable_auto_commit": False, "auto_offset_reset": "earliest"}
    kw.update(overrides)
    return KafkaConsumer(*topics, **cfg.client_kwargs(), **kw)


class TopicKeeper:
    """Keeps a set of topics present over one long-lived admin connection.

    A memory-only broker (the embedded one) forgets every topic when it restarts, yet acks a
    record that a producer with cached metadata sends to a topic it no longer has, and drops
    it. Producers that must not lose records call `ensure()` before each batch: one metadata
    round trip, which never auto-creates a topic with the broker's default partition count.
    """

    def __init__(self, cfg: KafkaConfig, topics: list[str], partitions: int = 3) -> None:
        self.cfg, self.topics, self.partitions = cfg, topics, partitions
        self._admin: KafkaAdminClient | None = None

    def ensure(self, also: Iterable[str] = ()) -> None:
        """Create whichever of the kept topics, and of `also`, the broker lacks."""
        try:
            if self._admin is None:
                self._admin = KafkaAdminClient(**self.cfg.client_kwargs())
            existing = set(self._admin.list_topics())
            missing = [NewTopic(t, self.partitions, 1)
                       for t in dict.fromkeys([*self.topics, *also]) if t not in existing]
            if missing:
                log.info("creating missing topics %s", [t.name for t in missing])
                with contextlib.suppress(TopicAlreadyExistsError):
                    self._admin.create_topics(missing)
        except Exception:
            self.close()  # start from a fresh connection next time
            raise

    def close(self) -> None:
        if self._admin is not None:
            self._admin.close()
            self._admin = None


def ensure_topics(cfg: KafkaConfig, topics: list[str], partitions: int = 3) -> None:
    """Create missing topics once; a broker that already has them is fine."""
    keeper = TopicKeeper(cfg, topics, partitions)
    try:
        keeper.ensure()
    finally:
        keeper.close()


def envelope(
    data: EventData,
    *,
    source: str,
    tenant: str | None,
    subject: str | None = None,
    event_id: str | None = None,
) -> CloudEvent:
    extra = {"id": event_id} if event_id else {}
    return CloudEvent(
        source=source,
        type=data.TYPE,
        subject=subject,
        tenant=tenant,
        data=data.model_dump(mode="json", exclude_none=True),
        **extra,
    )


def publish(producer: KafkaProducer, topic: str, event: CloudEvent, key: str | None,
            signing_key: SigningKey | None = None) -> None:
    """Send and wait for the broker's ack, so callers may record the event as published.

    With `signing_key` the record carries the `events.signing` headers over its value bytes.
    """
    value = event.to_bytes()
    headers = sign(value, signing_key.id, signing_key.secret) if signing_key else None
    producer.send(topic, key=key.encode() if key else None, value=value,
                  headers=headers).get(timeout=ACK_WAIT_S)
