"""The URL guard: every spelling of a non-public address is seen through, the allow-list opens
only what it names, and the archive check goes by magic bytes."""

from __future__ import annotations

import io
import tarfile
import zipfile
from ipaddress import IPv4Network, ip_address
from pathlib import Path

import pytest

from stagefiles.archives import archive_kind
from stagefiles.remote_data import (
    RemoteDataError,
    address_rule,
    check_s3_url,
    check_url,
    literal_address,
    local_copy,
    url_scheme,
)


@pytest.mark.parametrize(("host", "address"), [
    ("2130706433", "127.0.0.1"), ("0x7f000001", "127.0.0.1"), ("0177.0.0.1", "127.0.0.1"),
    ("127.1", "127.0.0.1"), ("0x7f.1", "127.0.0.1"), ("::ffff:127.0.0.1", "::ffff:7f00:1"),
    ("169.254.169.254", "169.254.169.254"), ("example.org", None), ("1.2.3.4.5", None),
])
def test_every_ipv4_spelling_is_read_as_the_address_it_is(host: str, address: str | None) -> None:
    found = literal_address(host)
    assert (found and str(found)) == address


@pytest.mark.parametrize(("address", "rule"), [
    ("127.0.0.1", "a loopback address"), ("10.1.2.3", "a private address"),
    ("192.168.0.1", "a private address"), ("172.16.0.1", "a private address"),
    ("169.254.169.254", "a link-local address"), ("0.0.0.0", "an unspecified address"),
    ("224.0.0.1", "a multicast address"), ("240.0.0.1", "a private address"),
    ("100.64.0.1", "a non-public address"), ("::1", "a loopback address"),
    ("::", "an unspecified address"), ("fe80::1", "a link-local address"),
    ("fc00::1", "a private address"), ("ff02::1", "a multicast address"),
    ("::ffff:10.0.0.1", "a private address"), ("::7f00:1", "a loopback address"),
    ("64:ff9b::7f00:1", "a loopback address"), ("64:ff9b:1::a00:1", "a private address"),
    ("2002:a9fe:a9fe::", "a link-local address"),
    ("8.8.8.8", None), ("2606:4700::1111", None), ("::ffff:8.8.8.8", None),
])
def test_only_public_addresses_pass(address: str, rule: str | None) -> None:
    assert address_rule(ip_address(address)) == rule


def test_the_allow_list_opens_exactly_its_networks() -> None:
    mirror = [IPv4Network("10.20.0.0/16")]
    assert address_rule(ip_address("10.20.3.4"), mirror) is None
    assert address_rule(ip_address("::ffff:10.20.3.4"), mirror) is None
    assert address_rule(ip_address("10.21.0.1"), mirror) == "a private address"
    assert address_rule(ip_address("127.0.0.1"), mirror) == "a loopback address"


@pytest.mark.parametrize(("url", "rule"), [
    ("file:///etc/passwd", "only http and https URLs are fetched"),
    ("gopher://example.org/", "only http and https URLs are fetched"),
    ("http:///t.jsonl", "the URL names no host"),
    ("http://example.org:99999/t.jsonl", "not a well-formed URL"),
    ("http://u:p@example.org/t.jsonl", "a URL with credentials is not accepted"),
    ("http://2130706433/t.jsonl", "the URL's host is a loopback address"),
    ("HTTP://[::ffff:169.254.169.254]/t.jsonl", "the URL's host is a link-local address"),
])
def test_urls_are_refused_by_rule_without_the_network(url: str, rule: str) -> None:
    with pytest.raises(RemoteDataError) as refused:
        check_url(url, resolve=False)
    assert str(refused.value).startswith(rule)


def test_a_host_name_is_judged_by_what_it_resolves_to() -> None:
    with pytest.raises(RemoteDataError, match="loopback"):
        check_url("http://localhost/t.jsonl")
    assert check_url("http://localhost/t.jsonl", resolve=False).address is None
    with pytest.raises(RemoteDataError, match="does not resolve"):
        check_url("http://no-such-host.invalid/t.jsonl")


def test_schemes_paths_and_local_copies() -> None:
    assert url_scheme("S3://b/k") == "s3" and url_scheme("C:/data.jsonl") is None
    assert url_scheme("data/t.jsonl") is None
    with pytest.raises(RemoteDataError, match=r"must end in \.jsonl, \.csv or \.parquet"):
        local_copy(Path("/w"), "train_file", "https://x.org/latest/")


def _zip() -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        archive.writestr("../x.jsonl", "{}\n")
    return out.getvalue()


def _tar() -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as archive:
        archive.addfile(tarfile.TarInfo("x.jsonl"))
    return out.getvalue()


@pytest.mark.parametrize(("head", "kind"), [
    (_zip(), "zip"), (_tar(), "tar"), (b"\x1f\x8b\x08\x00", "gzip"), (b"BZh91AY", "bzip2"),
    (b"\xfd7zXZ\x00\x00", "xz"), (b"(\xb5/\xfd", "zstd"), (b'{"text": "PK"}\n', None),
    (b"PAR1....", None), (b"", None),
])
def test_archives_are_known_by_their_magic_bytes(head: bytes, kind: str | None) -> None:
    assert archive_kind(head) == kind


@pytest.mark.parametrize(("url", "rule"), [
    ("s3://data/tenants/acme/t.jsonl", None),
    ("s3://data/tenants/acme/deep/er/t.jsonl", None),
    ("s3://data/tenants/acmex/t.jsonl", "outside the tenant's s3 prefix"),
    ("s3://data/tenants/t.jsonl", "outside the tenant's s3 prefix"),
    ("s3://elsewhere/tenants/acme/t.jsonl", "outside the tenant's s3 prefix"),
    ("s3://data/tenants/acme/./t.jsonl", "the s3 key may not have"),
    ("s3://data/tenants/acme/../globex/t.jsonl", "the s3 key may not have"),
    ("s3://data/tenants/acme/t.jsonl#x", "an s3 URL is s3://bucket/key"),
    ("s3://key:secret@data/tenants/acme/t.jsonl", "an s3 URL is s3://bucket/key"),
])
def test_s3_keys_must_lie_under_the_prefix_literally(url: str, rule: str | None) -> None:
    if rule is None:
        check_s3_url(url, "s3://data/tenants/acme/")
        return
    with pytest.raises(RemoteDataError) as refused:
        check_s3_url(url, "s3://data/tenants/acme/")
    assert str(refused.value).startswith(rule)
