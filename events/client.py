"""Partner-side helper: build and publish a fine-tuning request with any kafka-python setup.

    from events.client import request_finetune
    event = request_finetune(KafkaConfig(bootstrap_servers="kafka:9092"), tenant="acme",
                             recipe="energy-outage-triage", source="urn:acme:mlops")
"""

from __future__ import annotations

from events.bus import KafkaConfig, envelope, make_producer, publish
from events.envelope import CloudEvent
from events.messages import FineTuneRequested
from events.recipe import HyperparameterOverrides
from events.topics import Topics


def finetune_request(
    *,
    tenant: str,
    source: str,
    recipe: str,
    train_file: str | None = None,
    dataset: str | None = None,
    overrides: HyperparameterOverrides | None = None,
    labels: dict[str, str] | None = None,
) -> CloudEvent:
    data = FineTuneRequested(
        recipe=recipe,
        train_file=train_file,
        dataset=dataset,
        overrides=overrides or HyperparameterOverrides(),
        labels=labels or {},
    )
    return envelope(data, source=source, tenant=tenant)


def request_finetune(
    cfg: KafkaConfig, *, topics: Topics | None = None, **kwargs: object
) -> CloudEvent:
    """Publish a request; the event id is the request id (status events carry it as job id)."""
    event = finetune_request(**kwargs)  # type: ignore[arg-type]
    producer = make_producer(cfg)
    try:
        publish(producer, (topics or Topics()).requests, event, key=event.id)
    finally:
        producer.close()
    return event
