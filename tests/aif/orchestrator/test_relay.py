"""The outbox relay on a real database and broker: in order, once, and one relay at a time."""

from __future__ import annotations

import pytest
from kafka import TopicPartition
from kafka.errors import MessageSizeTooLargeError
from sqlalchemy import select, text
from sqlalchemy.orm import Session, sessionmaker

from aif.db.models import Outbox
from aif.db.session import session_factory
from aif.orchestrator.relay import RELAY_LOCK, OutboxRelay
from events.bus import KafkaConfig, TopicKeeper, make_consumer, make_producer
from events.topics import Topics

pytestmark = pytest.mark.store  # the outbox relay's claims and marks


def _rows(sessions: sessionmaker[Session], topic: str, n: int) -> None:
    with sessions() as s:
        s.add_all(Outbox(topic=topic, key="job", payload=f'{{"n": {i}}}') for i in range(n))
        s.commit()


def _published(broker: str, topic: str) -> list[bytes]:
    """Every record of the topic; all rows share one key, hence one partition and its order."""
    consumer = make_consumer(KafkaConfig(bootstrap_servers=broker))
    parts = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic))]
    consumer.assign(parts)
    consumer.seek_to_beginning(*parts)
    values = [r.value for rs in consumer.poll(timeout_ms=3000).values() for r in rs]
    consumer.close()
    return values


def test_rows_are_published_in_order_and_marked(
    sessions: sessionmaker[Session], broker: str, topics: Topics,
) -> None:
    cfg = KafkaConfig(bootstrap_servers=broker)
    keeper = TopicKeeper(cfg, topics.shared())  # the relay adds the tenant's topic itself
    _rows(sessions, topics.status("acme"), 5)
    producer = make_producer(cfg)
    try:
        relay = OutboxRelay(sessions, producer, ensure_topics=keeper.ensure)
        assert relay.publish_pending() == 5
        assert relay.publish_pending() == 0
    finally:
        producer.close()
        keeper.close()
    assert _published(broker, topics.status("acme")) == [f'{{"n": {i}}}'.encode() for i in range(5)]
    with sessions() as s:
        assert all(s.scalars(select(Outbox.published_at)).all())


@pytest.mark.postgres
def test_a_second_relay_waits_while_one_publishes(postgres_url: str, broker: str,
                                                  topics: Topics) -> None:
    sessions = session_factory(postgres_url)
    _rows(sessions, topics.status("acme"), 3)
    producer = make_producer(KafkaConfig(bootstrap_servers=broker))
    try:
        with sessions() as other:  # another orchestrator's relay, mid-batch
            assert other.scalar(text("SELECT pg_try_advisory_xact_lock(:k)"), {"k": RELAY_LOCK})
            assert OutboxRelay(sessions, producer).publish_pending() == 0
            other.rollback()  # its batch is done: the lock goes with the transaction
        assert OutboxRelay(sessions, producer).publish_pending() == 3
    finally:
        producer.close()


def test_a_send_that_raises_leaves_no_earlier_row_to_be_sent_twice(
    sessions: sessionmaker[Session], broker: str, topics: Topics,
) -> None:
    """A send can raise before queuing (here: a record over the producer's size limit; in the
    field: no topic metadata within max_block_ms). The rows queued before it are waited for
    and marked, so the next batch does not send them again; the rows after it wait in order."""
    topic = topics.status("acme")
    cfg = KafkaConfig(bootstrap_servers=broker)
    keeper = TopicKeeper(cfg, topics.shared())
    with sessions() as s:
        s.add_all([Outbox(topic=topic, key="job", payload='{"n": 0}'),
                   Outbox(topic=topic, key="job", payload='{"n": 1}'),
                   Outbox(topic=topic, key="job", payload='"' + "x" * 2_000_000 + '"'),
                   Outbox(topic=topic, key="job", payload='{"n": 3}')])
        s.commit()
    producer = make_producer(cfg)
    try:
        relay = OutboxRelay(sessions, producer, ensure_topics=keeper.ensure)
        for _ in range(2):
            with pytest.raises(MessageSizeTooLargeError):
                relay.publish_pending()
    finally:
        producer.close()
        keeper.close()
    assert _published(broker, topic) == [b'{"n": 0}', b'{"n": 1}']
    with sessions() as s:
        marked = s.scalars(select(Outbox.published_at).order_by(Outbox.id)).all()
    assert [m is not None for m in marked] == [True, True, False, False]
