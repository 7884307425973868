"""Request bodies over `max_body_bytes` are refused with a 413 problem before they are read,
on every route (a declared `Content-Length` at once, a chunked body as it streams in);
uploads keep their own, larger limit."""

from __future__ import annotations

import asyncio
import json
import socket
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from aif.settings import Settings
from aif.tenants import create_tenant
from aif.web.app import create_app
from aif.web.screenshots import serving
from events.bus import KafkaConfig
from tests.conftest import free_port

LIMIT = 1000
ROUTES = [("POST", "/v1/jobs"), ("POST", "/v1/jobs/x/cancel"), ("GET", "/v1/jobs"),
          ("POST", "/v1/models/acme/m/versions/1/retire"), ("GET", "/healthz"),
          ("POST", "/signin"), ("PUT", "/nowhere")]
"""JSON, form and body-less routes, a wrong method and an unknown path: every one."""
READS_ITS_BODY = [("POST", "/v1/jobs", "application/json"),
                  ("POST", "/v1/jobs/x/cancel", "application/json"),
                  ("POST", "/signin", "application/x-www-form-urlencoded")]


def _app(sessions: sessionmaker[Session], home: Path, **settings: Any) -> FastAPI:
    # No broker answers here: nothing in these tests may reach one.
    return create_app(sessions, Settings(  # type: ignore[arg-type]
        home=home, max_body_bytes=LIMIT, **settings,
        kafka=KafkaConfig(bootstrap_servers=f"127.0.0.1:{free_port()}")))


def _call(app: FastAPI, method: str, path: str, chunks: list[bytes],
          headers: dict[str, str]) -> tuple[int, dict[str, str], bytes, int]:
    """One request straight through the ASGI app: the answer's status, headers and body,
    and how many of the body's chunks the app pulled."""
    pulled, sent = 0, []

    async def receive() -> dict[str, Any]:
        nonlocal pulled
        if pulled == len(chunks):
            return {"type": "http.disconnect"}
        pulled += 1
        return {"type": "http.request", "body": chunks[pulled - 1],
                "more_body": pulled < len(chunks)}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
             "method": method, "scheme": "http", "path": path, "raw_path": path.encode(),
             "root_path": "", "query_string": b"", "server": ("127.0.0.1", 80),
             "client": ("127.0.0.1", 5000), "state": {},
             "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()]}
    asyncio.run(app(scope, receive, send))  # type: ignore[arg-type]
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return (start["status"], {k.decode(): v.decode() for k, v in start["headers"]}, body,
            pulled)


def _assert_refused(status: int, headers: dict[str, str], body: bytes) -> None:
    assert status == 413, body
    assert headers["content-type"] == "application/problem+json"
    assert headers["connection"] == "close"
    problem = json.loads(body)
    assert problem == {"type": "about:blank", "title": "Content too large", "status": 413,
                       "detail": f"body: larger than the limit of {LIMIT} bytes "
                                 "(AIF_MAX_BODY_BYTES)", "field": "body"}


@pytest.mark.parametrize(("method", "path"), ROUTES)
def test_a_declared_length_over_the_limit_is_refused_before_a_byte_is_read(
        sessions: sessionmaker[Session], tmp_path: Path, method: str, path: str) -> None:
    status, headers, body, pulled = _call(
        _app(sessions, tmp_path), method, path, [b"{" * 100] * 3,
        {"content-length": str(100 * 2**20), "content-type": "application/json"})
    _assert_refused(status, headers, body)
    assert pulled == 0


@pytest.mark.parametrize(("method", "path", "kind"), READS_ITS_BODY)
def test_a_streamed_body_is_refused_once_it_passes_the_limit(
        sessions: sessionmaker[Session], tmp_path: Path, method: str, path: str,
        kind: str) -> None:
    """Chunked, without a Content-Length: counted as it arrives, never held whole."""
    status, headers, body, pulled = _call(_app(sessions, tmp_path), method, path,
                                          [b" " * 400] * 50, {"content-type": kind})
    _assert_refused(status, headers, body)
    assert pulled == 3  # 1200 bytes: the first chunk past the limit, and no further


@pytest.mark.parametrize("declared", [True, False])
def test_a_body_at_the_limit_goes_through(sessions: sessionmaker[Session], tmp_path: Path,
                                          declared: bool) -> None:
    payload = json.dumps({"recipe": "grid-ticket-routing", "labels": {"pad": ""}})
    payload = payload.replace('""', '"' + "x" * (LIMIT - len(payload)) + '"')
    assert len(payload) == LIMIT
    headers = {"content-type": "application/json"}
    if declared:
        headers["content-length"] = str(LIMIT)
    status, _, body, pulled = _call(_app(sessions, tmp_path), "POST", "/v1/jobs",
                                    [payload[:600].encode(), payload[600:].encode()], headers)
    assert status == 401 and json.loads(body)["title"] == "Unauthorized"  # read, then asked
    assert pulled == 2


def test_uploads_keep_their_own_larger_limit(sessions: sessionmaker[Session],
                                             tmp_path: Path) -> None:
    with sessions() as s:
        key = create_tenant(s, "acme").api_key
        s.commit()
    rows = "".join(json.dumps({"text": f"ticket {i} " + "x" * 100, "label": "a"}) + "\n"
                   for i in range(40)).encode()
    assert len(rows) > 4 * LIMIT
    auth = {"Authorization": f"Bearer {key}"}
    stored = TestClient(_app(sessions, tmp_path)).post(
        "/v1/files", headers=auth, files={"file": ("t.jsonl", rows)})
    assert stored.status_code == 201, stored.text
    assert stored.json()["size_bytes"] == len(rows)
    over = TestClient(_app(sessions, tmp_path, max_upload_bytes=2 * LIMIT)).post(
        "/v1/files", headers=auth, files={"file": ("t.jsonl", rows)})
    assert over.status_code == 413
    assert over.json()["detail"] == (f"file: larger than the limit of {2 * LIMIT} bytes "
                                     "(AIF_MAX_UPLOAD_BYTES)")


def _refused_over_a_socket(sessions: sessionmaker[Session], tmp_path: Path,
                           headers: bytes, *parts: bytes) -> None:
    """Send a request that never finishes (`headers`, then `parts`) to the app on uvicorn:
    the 413 must come anyway (a server waiting for the rest would let the socket time out),
    and the server closes the connection instead of reading on."""
    with serving(_app(sessions, tmp_path)) as url:
        address = urlsplit(url)
        with socket.create_connection((address.hostname, address.port), timeout=10) as sock:
            sock.sendall(b"POST /v1/jobs HTTP/1.1\r\nHost: x\r\nContent-Type: "
                         b"application/json\r\n" + headers + b"\r\n")
            for part in parts:
                sock.sendall(part)
            answer = b""
            while chunk := sock.recv(65536):
                answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413 "), answer[:200]
    assert b"connection: close" in head.lower()
    assert json.loads(body)["detail"].startswith(f"body: larger than the limit of {LIMIT}")


def test_a_server_answers_a_100_mb_declaration_without_waiting_for_the_body(
        sessions: sessionmaker[Session], tmp_path: Path) -> None:
    """The issue's case: the answer comes while the client has sent only the headers and
    the first kilobyte."""
    _refused_over_a_socket(sessions, tmp_path, b"Content-Length: 100000000\r\n", b"{" * 1000)


def test_a_server_refuses_a_chunked_body_without_length_once_it_passes_the_limit(
        sessions: sessionmaker[Session], tmp_path: Path) -> None:
    """The streamed case: `Transfer-Encoding: chunked`, no Content-Length, and no last
    chunk; the answer comes once the count passes the limit (3 chunks of 400 bytes)."""
    _refused_over_a_socket(sessions, tmp_path, b"Transfer-Encoding: chunked\r\n",
                           *[b"190\r\n" + b" " * 400 + b"\r\n"] * 3)
