"""JSON service logs: one object a line, the job and tenant on each, secrets still masked."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator

import pytest
from sqlalchemy.orm import Session, sessionmaker

from aif import logs, redaction
from aif.settings import Settings
from events.bus import KafkaConfig
from tests.aif.conftest import store_trusted

PASSWORD = "kafka-sasl-password-4711"


@pytest.fixture
def root_logger() -> Iterator[logging.Logger]:
    """The root logger, its handlers and level put back after the test."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield root
    root.handlers[:], root.level = handlers, level


def lines(err: str) -> list[dict]:
    return [json.loads(line) for line in err.splitlines() if line.strip()]


def test_lines_in_a_job_name_the_job_and_tenant_and_mask_secrets(
    root_logger: logging.Logger, sessions: sessionmaker[Session],
    capsys: pytest.CaptureFixture[str],
) -> None:
    redaction.install(Settings(kafka=KafkaConfig(sasl_plain_password=PASSWORD)))
    job_id = store_trusted(sessions, recipe="grid-ticket-routing")
    logs.configure("json", "INFO")  # here: the handler takes this phase's sys.stderr
    capsys.readouterr()
    with logs.job_context(sessions, job_id):
        logging.getLogger("aif.orchestrator.worker").warning("broker said %s", PASSWORD)
        try:
            raise ConnectionError(f"login with {PASSWORD} refused")
        except ConnectionError:
            logging.getLogger("kafka.conn").exception("connection lost")
    logging.getLogger("aif.service").info("outside any job")
    inside, failed, outside = lines(capsys.readouterr().err)
    assert (inside["job_id"], inside["tenant"]) == (job_id, "acme")
    assert inside["level"] == "warning" and inside["logger"] == "aif.orchestrator.worker"
    assert inside["event"] == f"broker said {redaction.MASK}" and "timestamp" in inside
    assert failed["tenant"] == "acme" and "ConnectionError" in failed["exception"]
    assert PASSWORD not in json.dumps([inside, failed, outside])
    assert "job_id" not in outside and outside["event"] == "outside any job"


def test_console_logs_stay_plain(root_logger: logging.Logger,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    root_logger.handlers.clear()
    logs.configure("console", "WARNING")
    logging.getLogger("aif.x").warning("plain line")
    err = capsys.readouterr().err
    assert "aif.x plain line" in err and not err.lstrip().startswith("{")
