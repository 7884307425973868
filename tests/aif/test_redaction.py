"""Secrets are masked in every log record, whoever logs it."""

from __future__ import annotations

import logging

import pytest

from aif import redaction
from aif.settings import Settings
from events.bus import KafkaConfig

PASSWORD = "s3cr3t-kafka-pass"


@pytest.mark.parametrize(("line", "masked"), [
    ("Authorization: Bearer aif_ab12cd34ef56_QWERTYuiop-123", "Authorization: [redacted]"),
    ("aif-signature: hmac-sha256=" + "ab" * 32, "aif-signature: [redacted]"),
    ("key aif_ab12cd34ef56_QWERTYuiop-123 given", "key [redacted] given"),
    ("url http://user:pa55word@host/x", "url http://[redacted]@host/x"),
    ("nothing secret at step 7", "nothing secret at step 7"),
])
def test_credential_shapes_are_masked(line: str, masked: str) -> None:
    assert redaction.mask(line) == masked


def test_secret_settings_are_found_and_never_shown() -> None:
    settings = Settings(kafka=KafkaConfig(sasl_plain_password=PASSWORD))
    assert list(redaction.secret_values(settings)) == [PASSWORD]
    assert PASSWORD not in repr(settings) and PASSWORD not in settings.model_dump_json()
    assert settings.kafka.client_kwargs()["sasl_plain_password"] == PASSWORD


def test_every_logger_masks_configured_secrets(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AIF_SIGNING_SECRET", "signing-secret-123")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "aws-secret-456")
    redaction.install(Settings(kafka=KafkaConfig(sasl_plain_password=PASSWORD)))
    with caplog.at_level(logging.INFO):
        logging.getLogger("kafka.conn").info("config %s", {"sasl_plain_password": PASSWORD})
        logging.getLogger("uvicorn.error").warning("signed with signing-secret-123")
        logging.getLogger("botocore.auth").warning("key aws-secret-456")
        try:
            raise ValueError(f"bad password {PASSWORD}")
        except ValueError:
            logging.getLogger("aif.worker").exception("step failed")
    text = caplog.text
    assert PASSWORD not in text and "signing-secret-123" not in text
    assert "aws-secret-456" not in text
    assert text.count(redaction.MASK) == 4  # three messages and the traceback


def test_short_values_are_not_taken_for_secrets() -> None:
    masker = redaction.SecretMasker()
    masker.add(["abc", "long-enough"])
    assert masker.secrets == {"long-enough"}
