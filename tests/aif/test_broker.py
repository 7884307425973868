import time

import pytest

from aif.broker import BrokerError, EmbeddedBroker, ensure_broker, tansu_binary
from tests.conftest import free_port


def test_binary_ships_in_the_wheel() -> None:
    assert tansu_binary().stat().st_size > 1_000_000


def test_remote_cluster_that_does_not_answer_is_an_error(tmp_path) -> None:
    with pytest.raises(BrokerError, match=r"no Kafka broker answers at 192\.0\.2\.1:9092"):
        ensure_broker("192.0.2.1:9092", embedded=True, log_path=tmp_path / "b.log")
    with pytest.raises(BrokerError, match="only listens on loopback"):
        EmbeddedBroker("kafka.example:9092", tmp_path / "b.log")


def test_embedded_off_means_no_broker_is_started(tmp_path) -> None:
    address = f"127.0.0.1:{free_port()}"
    with pytest.raises(BrokerError, match="no Kafka broker answers"):
        ensure_broker(address, embedded=False, log_path=tmp_path / "b.log")


def test_existing_broker_is_reused(broker: str, tmp_path) -> None:
    assert ensure_broker(broker, embedded=True, log_path=tmp_path / "b.log") is None


def test_topic_keeper_recreates_what_a_restarted_broker_forgot(tmp_path) -> None:
    """The embedded broker forgets topics on restart and would ack and drop records sent to
    them by a producer with cached metadata; the keeper must notice. Its callers (intake, the
    relay) call it again after an error, as this test does: on a loaded box the first call
    may still find its old connection down and reconnect only on the next."""
    from kafka import KafkaAdminClient
    from kafka.errors import KafkaError

    from events.bus import KafkaConfig, TopicKeeper

    address = f"127.0.0.1:{free_port()}"
    broker = EmbeddedBroker(address, tmp_path / "b.log")
    broker.start()
    cfg = KafkaConfig(bootstrap_servers=address)
    keeper = TopicKeeper(cfg, ["k.status", "k.models"])
    try:
        keeper.ensure()
        broker.stop()
        broker.start()
        admin = KafkaAdminClient(**cfg.client_kwargs())
        assert "k.status" not in admin.list_topics()
        deadline = time.monotonic() + 60
        while True:
            try:
                keeper.ensure()
                break
            except KafkaError:
                assert time.monotonic() < deadline, "the keeper never reached the broker"
                time.sleep(0.5)
        assert {"k.status", "k.models"} <= set(admin.list_topics())
        assert len(admin.describe_topics(["k.status"])[0]["partitions"]) == 3
        admin.close()
    finally:
        keeper.close()
        broker.stop()
