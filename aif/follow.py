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
) -> Iterator[EventData | None]:
    """Yield the job's events from the start of the status and models topics.

    Yields None after each quiet poll, so a caller can stop on its own deadline. No consumer
    group: each follower reads everything itself and never disturbs the orchestrators'
    offsets.
    """
    consumer = make_consumer(cfg)
    deadline = time.monotonic() + timeout_s
    try:
        # The orchestrator creates the topics; a follower may well be up before it.
        while not all(consumer.partitions_for_topic(t) for t in (topics.status, topics.models)):
            if time.monotonic() > deadline:
                raise TimeoutError(f"topics {topics.status} and {topics.models} do not exist")
            yield None
            time.sleep(0.5)
        parts = [
            TopicPartition(topic, p)
            for topic in (topics.status, topics.models)
            for p in sorted(consumer.partitions_for_topic(topic) or [])
        ]
        consumer.assign(parts)
        consumer.seek_to_beginning(*parts)
        while time.monotonic() < deadline:
            batch = consumer.poll(timeout_ms=500)
            if not batch:
                yield None
            for records in batch.values():
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
