"""Signed request events: a partner proves which tenant it is with an HMAC in the record headers.

The event body cannot prove anything: anyone who may write to the requests topic can put any
`tenant` in it. So each record carries two Kafka headers:

    aif-key-id     the id of one of the tenant's signing keys (`aif tenants create` shows it)
    aif-signature  hmac-sha256=<64 lowercase hex digits>

The signature is HMAC-SHA256 keyed with the signing secret (its UTF-8 bytes, exactly as shown
when the key was created; not hex-decoded) over the record's value: the exact bytes sent, not
a re-serialised JSON. The Kafka key, the other headers and the timestamp are not signed. The
service looks the key id up, recomputes the HMAC over the value it received, compares in
constant time, and takes the tenant from the key; an event whose `tenant` attribute names
another tenant is refused, one without it gets the key's tenant.

This module needs only the standard library, so a partner can copy it or sign with any client:

    value = event_json_bytes
    headers = sign(value, key_id, secret)          # [("aif-key-id", ...), ("aif-signature", ...)]
    producer.send("aif.requests", key=..., value=value, headers=headers)
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Iterable
from dataclasses import dataclass, field

KEY_ID_HEADER = "aif-key-id"
SIGNATURE_HEADER = "aif-signature"
SCHEME = "hmac-sha256"

_SIGNATURE = re.compile(rb"hmac-sha256=[0-9a-f]{64}")
_KEY_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")


class SignatureError(ValueError):
    """The signing headers are unusable; the message starts with `signature:` and names the
    rule, never the header values."""


@dataclass(frozen=True)
class SigningKey:
    """A tenant's signing key as a producer holds it; the secret stays out of `repr`."""

    id: str
    secret: str = field(repr=False)


def signature(value: bytes, secret: str) -> str:
    """The `aif-signature` header's value for a record value."""
    return f"{SCHEME}=" + hmac.new(secret.encode(), value, hashlib.sha256).hexdigest()


def sign(value: bytes, key_id: str, secret: str) -> list[tuple[str, bytes]]:
    """The headers to send with `value` (kafka-python's `headers=` format)."""
    return [(KEY_ID_HEADER, key_id.encode()), (SIGNATURE_HEADER, signature(value, secret).encode())]


def verify(value: bytes, signature_header: bytes, secret: str) -> bool:
    """Whether `signature_header` is the signature of `value` under `secret` (constant time)."""
    return hmac.compare_digest(signature_header, signature(value, secret).encode())


def signing_headers(headers: Iterable[tuple[str, bytes | None]]) -> tuple[str, bytes] | None:
    """(key id, signature header) of a record; None when it carries neither header.

    Raises SignatureError for half a signature, a header given twice (which copy would count
    is a matter of client libraries), or a value of the wrong form.
    """
    found: dict[str, list[bytes | None]] = {}
    for name, value in headers:
        if name in (KEY_ID_HEADER, SIGNATURE_HEADER):
            found.setdefault(name, []).append(value)
    if not found:
        return None
    for name in (KEY_ID_HEADER, SIGNATURE_HEADER):
        if name not in found:
            raise SignatureError(f"signature: {name} header missing (a signed record carries "
                                 f"both {KEY_ID_HEADER} and {SIGNATURE_HEADER})")
        if len(found[name]) > 1:
            raise SignatureError(f"signature: {name} header given more than once")
    (raw_id,), (sig,) = found[KEY_ID_HEADER], found[SIGNATURE_HEADER]
    key_id = (raw_id or b"").decode("ascii", errors="replace")
    if not _KEY_ID.fullmatch(key_id):
        raise SignatureError(f"signature: {KEY_ID_HEADER} must be 1 to 64 letters, digits, "
                             "'-' or '_'")
    if sig is None or not _SIGNATURE.fullmatch(sig):
        raise SignatureError(f"signature: {SIGNATURE_HEADER} must read "
                             f"{SCHEME}=<64 lowercase hex digits>")
    return key_id, sig
