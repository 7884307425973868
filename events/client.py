"""Partner-side helper: publish a fine-tuning request and follow what becomes of it.

    from events.bus import KafkaConfig
    from events.client import follow_request, request_finetune
    from events.signing import SigningKey
    cfg = KafkaConfig(bootstrap_servers="kafka:9092")
    request = request_finetune(cfg, tenant="acme", recipe="grid-ticket-routing",
                               source="urn:acme:mlops",
                               signing_key=SigningKey(key_id, secret))  # aif tenants create
    for event in follow_request(cfg, request, tenant="acme"):  # JobStatusChanged, ... or None
        ...

The service's job id is not the request's id (it is derived from tenant, source and id by
`events.envelope.job_id_for`); every status and model event names the request instead, in its
data (`request_source`, `request_id`) and as the CloudEvents extension attributes
`requestsource` and `requestid`, so any client matches it without this module.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Generator

from kafka import TopicPartition

from events.bus import KafkaConfig, envelope, make_consumer, make_producer, publish
from events.envelope import CloudEvent, EnvelopeError
from events.messages import EVENT_TYPES, REQUEST_EXTENSIONS, EventData, FineTuneRequested
from events.recipe import HyperparameterOverrides
from events.signing import SigningKey
from events.topics import Topics

TOPIC_LOOK_S = 5.0
"""How often a follower looks for a topic of its tenant that did not exist yet."""


def finetune_request(
    *,
    tenant: str | None,
    source: str,
    recipe: str,
    train_file: str | None = None,
    dataset: str | None = None,
    overrides: HyperparameterOverrides | None = None,
    labels: dict[str, str] | None = None,
    eval_file: str | None = None,
    eval_split: float | None = None,
) -> CloudEvent:
    data = FineTuneRequested(
        recipe=recipe,
        train_file=train_file,
        dataset=dataset,
        eval_file=eval_file,
        eval_split=eval_split,
        overrides=overrides or HyperparameterOverrides(),
        labels=labels or {},
    )
    return envelope(data, source=source, tenant=tenant)


def request_finetune(
    cfg: KafkaConfig, *, topics: Topics | None = None, signing_key: SigningKey | None = None,
    **kwargs: object,
) -> CloudEvent:
    """Publish a request and return it: its `source` and `id` are what to follow it by.

    `signing_key` signs the record (see `events.signing`); a service requiring signed events
    (the default) dead-letters an unsigned one. With it, `tenant=None` means the key's tenant.
    """
    event = finetune_request(**kwargs)  # type: ignore[arg-type]
    producer = make_producer(cfg)
    try:
        publish(producer, (topics or Topics()).requests, event, key=event.id,
                signing_key=signing_key)
    finally:
        producer.close()
    return event


def answers(event: CloudEvent, request: CloudEvent) -> bool:
    """Whether a status or model event is about the job serving `request`."""
    ext = REQUEST_EXTENSIONS
    return (getattr(event, ext["request_source"], None) == request.source
            and getattr(event, ext["request_id"], None) == request.id)


def follow_request(
    cfg: KafkaConfig, request: CloudEvent, *, tenant: str | None = None,
    topics: Topics | None = None, timeout_s: float = 3600,
) -> Generator[EventData | None, None, None]:
    """The events of the job serving `request`, as `follow` yields them. `tenant`: whose
    topics to read, by default the request's `tenant` attribute (give it when the request
    left the tenant to its signing key)."""
    tenant = tenant or request.tenant
    if tenant is None:
        raise ValueError("the request names no tenant: give follow_request(tenant=...)")
    return follow(cfg, topics or Topics(), tenant, lambda ev: answers(ev, request), timeout_s)


def follow(
    cfg: KafkaConfig, topics: Topics, tenant: str, matches: Callable[[CloudEvent], bool],
    timeout_s: float = 3600,
) -> Generator[EventData | None, None, None]:
    """Yield the data of every matching event from the start of the tenant's status and models
    topics (`Topics.of_tenant`: the only ones its broker ACL lets it read).

    Yields None after each poll that brought nothing matching, so a caller can stop on its own
    deadline even while other jobs keep the topics busy; raises TimeoutError after
    `timeout_s`. No consumer group: each follower reads everything itself and never disturbs
    another's offsets. Records that are not CloudEvents are someone else's and skipped.
    """
    consumer = make_consumer(cfg)
    deadline = time.monotonic() + timeout_s
    names = topics.of_tenant(tenant)
    assigned: list[TopicPartition] = []
    look_at = 0.0
    try:
        while time.monotonic() < deadline:
            missing = [t for t in names if t not in {p.topic for p in assigned}]
            if missing and time.monotonic() >= look_at:
                # The service creates a tenant's topics with their first event, the models
                # topic with its first model, which a rejected job never has: read those that
                # exist and look for the others now and then.
                new = [TopicPartition(topic, p) for topic in missing
                       for p in sorted(consumer.partitions_for_topic(topic) or [])]
                if new:
                    assigned += new
                    consumer.assign(assigned)  # kept partitions keep their positions
                    consumer.seek_to_beginning(*new)
                look_at = time.monotonic() + (TOPIC_LOOK_S if assigned else 0.5)
            if not assigned:
                yield None
                time.sleep(0.5)
                continue
            found = False
            for records in consumer.poll(timeout_ms=500).values():
                for record in records:
                    try:
                        event = CloudEvent.from_bytes(record.value)
                    except EnvelopeError:
                        continue
                    model = EVENT_TYPES.get(event.type)
                    if model is not None and matches(event):
                        found = True
                        yield model.model_validate(event.data)
            if not found:
                yield None
        if not assigned:
            raise TimeoutError(f"topics {' and '.join(names)} do not exist")
        raise TimeoutError(f"still following after {timeout_s:.0f}s")
    finally:
        consumer.close()
