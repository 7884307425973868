"""CloudEvents 1.0 envelope in structured-mode JSON, as carried in a Kafka record's value."""

from __future__ import annotations

import difflib
import json
import re
import typing
import uuid
from datetime import UTC, datetime
from functools import cache
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

MAX_EVENT_BYTES = 64 * 1024
"""Requests larger than this are dead-lettered: a recipe plus overrides fits in a few KiB."""

MAX_JSON_DEPTH = 32
"""Deeper nesting is dead-lettered before parsing: a request nests about 6 levels, and a
10,000-deep one would make the JSON parser and pydantic recurse until RecursionError."""

REQUIRED_ON_THE_WIRE = ("id",)
"""Required by CloudEvents 1.0 although the model fills them in for events we build."""

MAX_LISTED_ERRORS = 10
"""A reason lists at most this many problems, so it fits in a Kafka header and a log line."""


class EnvelopeError(ValueError):
    """The bytes are not a usable CloudEvent; the message names the field that failed."""


_NO_NUL = r"^[^\x00]*$"
"""Both are stored in text columns, and PostgreSQL's cannot hold a NUL character."""


def _now() -> datetime:
    return datetime.now(UTC)


class CloudEvent(BaseModel):
    """Required and optional CloudEvents 1.0 context attributes plus our `tenant` extension."""

    model_config = ConfigDict(extra="allow", frozen=True)

    specversion: str = Field("1.0", pattern=r"^1\.0$")
    id: str = Field(default_factory=lambda: str(uuid.uuid4()), min_length=1, max_length=200,
                    pattern=_NO_NUL)
    source: str = Field(min_length=1, max_length=500, pattern=_NO_NUL)
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
        """Parse an incoming event. Size and depth are checked on the bytes, before parsing;
        no message quotes the bytes, only the rule and a position."""
        if raw is None:
            raise EnvelopeError("record has no value (tombstone)")
        if len(raw) > MAX_EVENT_BYTES:
            raise EnvelopeError(f"event is {len(raw)} bytes, over the {MAX_EVENT_BYTES} limit")
        check_json_depth(raw)
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise EnvelopeError(f"value is not JSON: not UTF-8 at byte {exc.start}") from exc
        try:
            obj = json.loads(text, parse_constant=_no_constant)
        except json.JSONDecodeError as exc:  # its msg is fixed text, never the input
            raise EnvelopeError(f"value is not JSON: {exc.msg} at character {exc.pos}") from exc
        except ValueError as exc:  # NaN/Infinity, or an integer over Python's digit limit
            raise EnvelopeError("value is not JSON: a number is not a finite JSON number "
                                "of at most 4300 digits") from exc
        if not isinstance(obj, dict):
            raise EnvelopeError("value is JSON but not an object")
        missing = [f"{name}: Field required (CloudEvents 1.0)"
                   for name in REQUIRED_ON_THE_WIRE if name not in obj]
        try:
            event = cls.model_validate(obj)
        except ValidationError as exc:
            raise EnvelopeError("; ".join(
                [*missing, describe_validation_error(exc, model=cls)])) from exc
        if missing:
            raise EnvelopeError("; ".join(missing))
        return event


def _no_constant(name: str) -> float:
    raise ValueError(name)


_JSON_TOKEN = re.compile(rb'"(?:[^"\\]|\\.)*"?|[\[\]{}]', re.DOTALL)
"""A string (to skip; an unterminated one runs to the end) or a bracket."""


def check_json_depth(raw: bytes, limit: int = MAX_JSON_DEPTH) -> None:
    """Refuse bytes whose brackets outside strings nest deeper than `limit`, without parsing."""
    depth = 0
    for token in _JSON_TOKEN.finditer(raw):
        bracket = token.group()
        if bracket in (b"[", b"{"):
            depth += 1
            if depth > limit:
                raise EnvelopeError(f"value nests deeper than {limit} levels at byte "
                                    f"{token.start()}")
        elif bracket in (b"]", b"}"):
            depth -= 1


def job_id_for(tenant: str, source: str, event_id: str) -> str:
    """Deterministic job id for a request, so a partner can follow it without a reply channel.

    The tenant is part of it, as of the de-duplication: another tenant sending the same
    `source` and `id` gets a job of its own. A tenant name has no `#`, so no two tenants'
    inputs are the same text.
    """
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"{tenant}#{source}#{event_id}"))


def describe_validation_error(
    exc: ValidationError, prefix: str = "", model: type[BaseModel] | None = None
) -> str:
    """One line per problem, each naming the dotted field path, so a partner can fix it.

    Only pydantic's message is used, never the input. With `model` (for untrusted input),
    path parts that are no field name of it are the sender's own keys and show as `<key>`,
    so the reason quotes nothing the sender wrote.
    """
    errors = exc.errors()
    lines = []
    for err in errors[:MAX_LISTED_ERRORS]:
        parts = [str(p) for p in err["loc"]] if model is None else _safe_loc(err, model)
        loc = ".".join(p for p in (prefix, *parts) if p != "")
        lines.append(f"{loc or '<root>'}: {err['msg']}")
    if len(errors) > MAX_LISTED_ERRORS:
        lines.append(f"and {len(errors) - MAX_LISTED_ERRORS} more problems")
    return "; ".join(lines)


_UNION_TAG = re.compile(r"^[a-z-]+\[.*\]$|^[A-Z][A-Za-z]+$")
"""How pydantic names the member of a union that failed: `list[str]`, `literal['x']`."""


def _safe_loc(err: Any, model: type[BaseModel]) -> list[str]:
    names = _field_names(model)
    loc = err["loc"]
    parts: list[str] = []
    for i, part in enumerate(loc):
        if isinstance(part, int) or part in names:
            parts.append(str(part))
        elif _extra(err) and i == len(loc) - 1:
            hint = difflib.get_close_matches(part, names, n=1)
            parts.append(f"<key> (did you mean {hint[0]!r}?)" if hint else "<key>")
        elif not _UNION_TAG.match(part):  # a union member's tag is dropped, a key masked
            parts.append("<key>")
    return parts


def _extra(err: Any) -> bool:
    return err["type"] == "extra_forbidden"


@cache
def _field_names(model: type[BaseModel]) -> frozenset[str]:
    """Every field name and alias of `model` and of the models nested in its fields."""
    names: set[str] = set()
    seen: set[type] = set()

    def visit(tp: Any) -> None:
        if isinstance(tp, type) and issubclass(tp, BaseModel):
            if tp in seen:
                return
            seen.add(tp)
            for name, field in tp.model_fields.items():
                names.update(n for n in (name, field.alias) if n)
                visit(field.annotation)
        for arg in typing.get_args(tp):
            visit(arg)

    visit(model)
    return frozenset(names)
