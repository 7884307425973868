"""Remote training data: http(s) URLs fetched only from addresses the site allows.

A URL names a host, but what matters is the address a connection reaches. So each hop's host
is resolved once, every address it resolves to must be public (or inside the site's
allow-list), and the connection goes to that checked address, with the name only in the Host
header and the TLS SNI and certificate check, so DNS rebinding cannot swap the address.
Redirects are followed by hand, each hop checked again. Any spelling of an IPv4 address that
a resolver accepts (`2130706433`, `0x7f000001`, `0177.0.0.1`, `127.1`) is read as the address
it is, and IPv6 forms that embed an IPv4 address (mapped, compatible, NAT64, 6to4) are judged
by that address.

`s3://bucket/key` objects are fetched with boto3 from the site's store (`s3_endpoint_url`),
only under the tenant's prefix. Lives in `stagefiles` because the orchestrator checks URLs at
intake and validation, and the pre-flight stage downloads them, and neither may import the
other. Messages name the rule,
never the URL or anything the server sent.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import os
import re
import socket
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from pathlib import Path, PurePosixPath
from urllib.parse import urljoin, urlsplit

import httpx

from events.recipe_data import DataSection
from stagefiles.archives import HEAD_BYTES, archive_kind, archive_rule

Address = IPv4Address | IPv6Address
Network = IPv4Network | IPv6Network

PORTS = {"http": 80, "https": 443}
MAX_REDIRECTS = 5
TIMEOUT_S = 60.0
SUFFIXES = (".jsonl", ".csv", ".parquet")
REMOTE_FIELDS = ("train_file", "validation_file")
_REDIRECTS = (301, 302, 303, 307, 308)
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]+):")
_NAT64 = (IPv6Network("64:ff9b::/96"), IPv6Network("64:ff9b:1::/48"))
_KINDS = {"unspecified": "an unspecified", "loopback": "a loopback", "link_local": "a link-local",
          "multicast": "a multicast", "private": "a private", "reserved": "a reserved"}


class RemoteDataError(ValueError):
    """A URL may not be fetched, or what it answered is not usable: the request's fault."""


class RemoteServerError(ConnectionError):
    """The server failed or could not be reached: infrastructure, worth a retry."""

    def __init__(self, message: str) -> None:
        super().__init__(errno.EIO, message)


def url_scheme(reference: str) -> str | None:
    """The scheme of a reference that is a URL (lower case), None for a path. One letter
    before a colon is a drive, not a scheme."""
    found = _SCHEME.match(reference)
    return found.group(1).lower() if found else None


def literal_address(host: str) -> Address | None:
    """The address `host` spells, in any form inet_aton or IPv6 notation accepts."""
    with contextlib.suppress(ValueError):
        return ipaddress.ip_address(host)
    try:
        return IPv4Address(socket.inet_aton(host))
    except (OSError, ValueError):  # not an address; ValueError: a NUL byte
        return None


def _embedded_ipv4(address: IPv6Address) -> IPv4Address | None:
    """The IPv4 address an IPv6 one carries (mapped, compatible, NAT64, 6to4), if any."""
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if 1 < int(address) < 2**32 or any(address in net for net in _NAT64):
        return IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def address_rule(address: Address, allowed: Sequence[Network] = ()) -> str | None:
    """Why a connection to `address` is refused (its kind), or None when it may be made."""
    if any(address.version == net.version and address in net for net in allowed):
        return None
    if isinstance(address, IPv6Address) and (inner := _embedded_ipv4(address)) is not None:
        return address_rule(inner, allowed)
    for kind, words in _KINDS.items():
        if getattr(address, f"is_{kind}"):
            return f"{words} address"
    return None if address.is_global else "a non-public address"


@dataclass(frozen=True)
class Target:
    """One hop, checked: connect to `address`, naming `host`."""

    scheme: str
    host: str
    port: int
    path: str
    address: Address | None  # None: not resolved (intake checks the URL's form only)


def check_url(url: str, allowed: Sequence[Network] = (), *, resolve: bool = True) -> Target:
    """The URL's hop, or RemoteDataError naming the rule it breaks. `resolve=False` checks
    only what needs no network: scheme, form and an address spelled in the URL."""
    if url_scheme(url) not in PORTS:
        raise RemoteDataError("only http and https URLs are fetched")
    try:
        parts = urlsplit(url)
        port = parts.port or PORTS[parts.scheme.lower()]
    except ValueError as exc:
        raise RemoteDataError("not a well-formed URL") from exc
    host = parts.hostname
    if not host:
        raise RemoteDataError("the URL names no host")
    if parts.username is not None or parts.password is not None:
        raise RemoteDataError("a URL with credentials is not accepted")
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    addresses = [literal] if (literal := literal_address(host)) else []
    if not addresses and resolve:
        addresses = _resolve(host, port)
    for address in addresses:
        if rule := address_rule(address, allowed):
            raise RemoteDataError(f"the URL's host is {rule}; only public addresses are "
                                  "fetched (or the site's remote_data_allow_networks)")
    return Target(parts.scheme.lower(), host, port, path, addresses[0] if addresses else None)


def _resolve(host: str, port: int) -> list[Address]:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise RemoteDataError("the URL's host name does not resolve") from exc
    return [ipaddress.ip_address(str(info[4][0]).split("%", 1)[0]) for info in infos]


def local_copy(work_dir: Path, field: str, url: str) -> Path:
    """Where the pre-flight stage keeps the download of `field`, which training then reads."""
    suffix = PurePosixPath(urlsplit(url).path).suffix.lower()
    if suffix not in SUFFIXES:
        raise RemoteDataError("the URL's path must end in .jsonl, .csv or .parquet")
    return work_dir / "remote" / f"{field}{suffix}"


def remote_fields(data: DataSection) -> dict[str, str]:
    """The data section's files that are URLs (http, https, s3), by field name."""
    return {field: url for field in REMOTE_FIELDS
            if (url := getattr(data, field)) is not None and url_scheme(url) in (*PORTS, "s3")}


def check_s3_url(url: str, prefix: str) -> None:
    """RemoteDataError unless `url` is `s3://bucket/key` under `prefix` (`s3://bucket/path/`).
    Keys are taken literally, so `.`, `..` and empty segments, which
    some S3-compatible stores collapse, are refused rather than interpreted."""
    parts, allowed = urlsplit(url), urlsplit(prefix)
    if parts.query or parts.fragment or "@" in parts.netloc:
        raise RemoteDataError("an s3 URL is s3://bucket/key, without query, fragment or "
                              "credentials")
    key = parts.path.removeprefix("/")
    if any(segment in ("", ".", "..") for segment in key.split("/")):
        raise RemoteDataError("the s3 key may not have empty, '.' or '..' segments")
    if parts.netloc != allowed.netloc or not key.startswith(allowed.path.removeprefix("/")):
        raise RemoteDataError("outside the tenant's s3 prefix")


def localised(data: DataSection, work_dir: Path) -> DataSection:
    """The data section reading the local copies of its URLs."""
    return data.model_copy(update={field: str(local_copy(work_dir, field, url))
                                   for field, url in remote_fields(data).items()})


def fetch_all(data: DataSection, work_dir: Path, allowed: Sequence[Network],
              max_bytes: int, s3_endpoint_url: str | None = None) -> DataSection:
    """Download every URL of the data section into the work dir; the section reading them.
    `s3_endpoint_url`: an S3-compatible store instead of AWS's (credentials: the standard
    AWS environment of this process)."""
    for field, url in remote_fields(data).items():
        try:
            dest = local_copy(work_dir, field, url)
            if url_scheme(url) == "s3":
                download_s3(url, dest, max_bytes, s3_endpoint_url)
            else:
                download(url, dest, allowed, max_bytes)
        except RemoteDataError as exc:
            raise RemoteDataError(f"data.{field}: {exc}") from exc
    return localised(data, work_dir)


def download_s3(url: str, dest: Path, max_bytes: int, endpoint_url: str | None) -> None:
    """Fetch an `s3://bucket/key` object (already checked against the tenant's prefix)."""
    import boto3  # only the stage that downloads needs the AWS SDK
    from botocore.exceptions import BotoCoreError, ClientError

    parts = urlsplit(url)
    client = boto3.client("s3", endpoint_url=endpoint_url)
    try:
        answer = client.get_object(Bucket=parts.netloc, Key=parts.path.removeprefix("/"))
    except ClientError as exc:
        code = str(exc.response.get("Error", {}).get("Code", "an error"))
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))
        if status >= 500:
            raise RemoteServerError(f"the object store answered {code}") from exc
        raise RemoteDataError(f"the object store answered {code}") from exc
    except BotoCoreError as exc:  # unreachable, no credentials: the site's, not the request's
        raise RemoteServerError(f"the object store was not reached ({type(exc).__name__})"
                                ) from exc
    with contextlib.closing(answer["Body"]) as body:
        _save(body.iter_chunks(), answer.get("ContentLength"), dest, max_bytes)


def download(url: str, dest: Path, allowed: Sequence[Network], max_bytes: int,
             timeout_s: float = TIMEOUT_S) -> None:
    """Fetch `url` into `dest`, each hop checked and pinned; at most MAX_REDIRECTS redirects
    and `max_bytes` bytes; an archive is refused by its magic bytes."""
    for _ in range(MAX_REDIRECTS + 1):
        target = check_url(url, allowed)
        with _pinned_get(target, timeout_s) as response:
            if response.status_code in _REDIRECTS:
                location = response.headers.get("location")
                if not location:
                    raise RemoteDataError("a redirect without a Location")
                url = urljoin(url, location)
                continue
            if response.status_code >= 500:
                raise RemoteServerError(f"the server answered HTTP {response.status_code}")
            if response.status_code != 200:
                raise RemoteDataError(f"the server answered HTTP {response.status_code}")
            declared = response.headers.get("content-length", "")
            _save(response.iter_bytes(), int(declared) if declared.isdigit() else None, dest,
                  max_bytes)
            return
    raise RemoteDataError(f"more than {MAX_REDIRECTS} redirects")


@contextlib.contextmanager
def _pinned_get(target: Target, timeout_s: float) -> Iterator[httpx.Response]:
    """GET the hop from its checked address; no proxy from the environment (it would
    choose the address itself)."""
    assert target.address is not None
    ip = f"[{target.address}]" if target.address.version == 6 else str(target.address)
    name = f"[{target.host}]" if ":" in target.host else target.host
    default = PORTS[target.scheme] == target.port
    headers = {"Host": name if default else f"{name}:{target.port}"}
    with httpx.Client(timeout=timeout_s, follow_redirects=False, trust_env=False) as client:
        request = client.build_request(
            "GET", f"{target.scheme}://{ip}:{target.port}{target.path}", headers=headers,
            extensions={"sni_hostname": target.host})
        try:
            response = client.send(request, stream=True)
        except httpx.TransportError as exc:  # its text names the address: only the class
            raise RemoteServerError(f"the server was not reached ({type(exc).__name__})") from exc
        try:
            yield response
        finally:
            response.close()


def _save(chunks: Iterable[bytes], declared: int | None, dest: Path, max_bytes: int) -> None:
    """Stream the body to `dest` (owner-only) through a temporary name, within the limit."""
    if declared is not None and declared > max_bytes:
        raise RemoteDataError(f"larger than the limit of {max_bytes} bytes")
    dest.parent.mkdir(parents=True, exist_ok=True)
    partial = dest.with_name(dest.name + ".partial")
    partial.unlink(missing_ok=True)
    size, head = 0, b""
    try:
        with os.fdopen(os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as out:
            for chunk in chunks:
                size += len(chunk)
                if size > max_bytes:
                    raise RemoteDataError(f"larger than the limit of {max_bytes} bytes")
                if len(head) < HEAD_BYTES:
                    head += chunk[:HEAD_BYTES - len(head)]
                out.write(chunk)
        if kind := archive_kind(head):
            raise RemoteDataError(archive_rule(kind))
        partial.replace(dest)
    finally:
        partial.unlink(missing_ok=True)
