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
