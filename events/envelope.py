"""CloudEvents 1.0 envelope in structured-mode JSON, as carried in a Kafka record's value."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

MAX_EVENT_BYTES = 64 * 1024
"""Requests larger than this are dead-lettered: a recipe plus overrides fits in a few KiB."""


class EnvelopeError(ValueError):
    """The bytes are not a usable CloudEvent; the message names the field that failed."""


def _now() -> datetime:
    return datetime.now(UTC)


class CloudEvent(BaseModel):
    """Required and optional CloudEvents 1.0 context attributes plus our `tenant` extension."""

    model_config = ConfigDict(extra="allow", frozen=True)

    specversion: str = Field("1.0", pattern=r"^1\.0$")
    id: str = Field(default_factory=lambda: str(uuid.uuid4()), min_length=1, max_length=200)
    source: str = Field(min_length=1, max_length=500)
    type: str = Field(min_length=1, max_length=200)
    subject: str | None = None
    time: datetime = Field(default_factory=_now)
    datacontenttype: str = "application/json"
    dataschema: str | None = None
    tenant: str | None = Field(None, pattern=r"^[a-z0-9][a-z0-9-]{0,62}$")
    data: dict[str, Any] = Field(default_factory=dict)

    def to_bytes(self) -> bytes:
        return self.model_dump_json(exclude_none=True).encode()

    @classmethod
    def from_bytes(cls, raw: bytes | None) -> CloudEvent:
        if raw is None:
            raise EnvelopeError("record has no value (tombstone)")
        if len(raw) > MAX_EVENT_BYTES:
            raise EnvelopeError(f"event is {len(raw)} bytes, over the {MAX_EVENT_BYTES} limit")
        try:
            obj = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise EnvelopeError(f"value is not JSON: {exc}") from exc
        if not isinstance(obj, dict):
            raise EnvelopeError("value is JSON but not an object")
        try:
            return cls.model_validate(obj)
        except ValidationError as exc:
            raise EnvelopeError(describe_validation_error(exc)) from exc


def job_id_for(source: str, event_id: str) -> str:
    """Deterministic job id for a request, so a partner can follow it without a reply channel."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"{source}#{event_id}"))


def describe_validation_error(exc: ValidationError, prefix: str = "") -> str:
    """One line per problem, each naming the dotted field path, so a partner can fix it."""
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in (prefix, *err["loc"]) if p != "")
        lines.append(f"{loc or '<root>'}: {err['msg']}")
    return "; ".join(lines)
