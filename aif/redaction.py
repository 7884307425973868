"""Secrets never reach a log line: known secret values and credential shapes are masked.

Every log record is masked when it is created (`install` wraps the record factory), so it
holds for every logger and handler, those that libraries such as uvicorn and kafka-python
set up themselves included. Masked: each configured secret value (pydantic `SecretStr`
fields of the settings, the signing secret and API key from the environment), `Bearer ...`
tokens, `hmac-sha256=...` signatures, `aif_...` API keys and passwords inside URLs.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterable, Iterator

from pydantic import BaseModel, SecretStr

MASK = "[redacted]"
MIN_SECRET_CHARS = 6  # shorter values would mask ordinary words
SECRET_ENV = ("AIF_SIGNING_SECRET", "AIF_API_KEY",
              "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")  # the s3 data store's (boto3)
PATTERNS = (
    re.compile(r"(?i)\bBearer\s+[A-Za-z0-9._~+/=-]+"),
    re.compile(r"(?i)hmac-sha256=[0-9a-f]+"),
    re.compile(r"\baif_[a-z0-9]+_[A-Za-z0-9_-]{8,}"),
    re.compile(r"(?<=://)[^/\s:@]+:[^/\s@]+(?=@)"),
)


def mask(text: str, secrets: Iterable[str] = ()) -> str:
    """The text with every known secret value and credential pattern replaced by MASK."""
    for secret in sorted(secrets, key=len, reverse=True):  # a longer secret may hold a shorter
        text = text.replace(secret, MASK)
    for pattern in PATTERNS:
        text = pattern.sub(MASK, text)
    return text


def secret_values(model: BaseModel) -> Iterator[str]:
    """The values of every SecretStr field of `model` and of the models nested in it."""
    for name in type(model).model_fields:
        value = getattr(model, name)
        if isinstance(value, SecretStr):
            yield value.get_secret_value()
        elif isinstance(value, BaseModel):
            yield from secret_values(value)


class SecretMasker(logging.Filter):
    """Masks a record's formatted message (and the traceback text) in place; never drops it."""

    def __init__(self) -> None:
        super().__init__()
        self.secrets: set[str] = set()

    def add(self, secrets: Iterable[str]) -> None:
        self.secrets |= {s for s in secrets if len(s) >= MIN_SECRET_CHARS}

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        masked = mask(message, self.secrets)
        if masked != message:
            record.msg, record.args = masked, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = mask(record.exc_text, self.secrets)
        return True


MASKER = SecretMasker()
_base_factory = logging.getLogRecordFactory()


def _masked_record(*args: object, **kwargs: object) -> logging.LogRecord:
    record = _base_factory(*args, **kwargs)
    MASKER.filter(record)
    return record


def install(settings: BaseModel | None = None) -> SecretMasker:
    """Mask from now on every log record of this process; idempotent, secrets accumulate."""
    if settings is not None:
        MASKER.add(secret_values(settings))
    MASKER.add(value for name in SECRET_ENV if (value := os.environ.get(name)))
    logging.setLogRecordFactory(_masked_record)
    return MASKER
