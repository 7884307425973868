"""Follow one job's status and progress events on the bus, as a partner's client would."""

from __future__ import annotations

import time
from collections.abc import Iterator

from kafka import TopicPartition

from events.bus import KafkaConfig, make_consumer
from events.envelope import CloudEvent
from events.messages import EVENT_TYPES, EventData
from events.topics import Topics


def follow_job(
    cfg: KafkaConfig, topics: Topics, job_id: str, timeout_s: float = 3600
) -> Iterator[EventData]:
    """Yield the job's events from the start of the status and models topics, in order.

    No consumer group: each follower reads everything itself and never disturbs the
    orchestrators' offsets.
    """
    consumer = make_consumer(cfg)
    try:
        parts = [
            TopicPartition(topic, p)
            for topic in (topics.status, topics.models)
            for p in sorted(consumer.partitions_for_topic(topic) or [])
        ]
        consumer.assign(parts)
        consumer.seek_to_beginning(*parts)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=500).values():
                for record in records:
                    if record.key != job_id.encode():
                        continue
                    event = CloudEvent.from_bytes(record.value)
                    model = EVENT_TYPES.get(event.type)
                    if model is not None:
                        yield model.model_validate(event.data)
        raise TimeoutError(f"job {job_id} did not finish within {timeout_s:.0f}s")
    finally:
        consumer.close()
