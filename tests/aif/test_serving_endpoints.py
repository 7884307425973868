"""Endpoint failures are reported per endpoint, never raised: a server that is away, one
that keeps failing (retried, then given up), one that refuses; the others still count."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from aif.serving_endpoints import Endpoints
from tests.conftest import free_port


class _Failing(BaseHTTPRequestHandler):
    """Lists no adapter and answers every load with the status the test set."""

    status = 500
    posts: list[str] = []

    def do_GET(self) -> None:
        body = json.dumps({"data": [{"id": "tiny-base"}]}).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:
        self.posts.append(self.path)
        self.send_response(self.status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *_: object) -> None:
        pass


@pytest.fixture
def failing() -> Iterator[str]:
    _Failing.posts = []
    server = ThreadingHTTPServer(("127.0.0.1", free_port()), _Failing)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()


def test_a_server_that_is_away_is_reported_failed() -> None:
    away = f"http://127.0.0.1:{free_port()}"
    assert Endpoints([away], 2.0, 2).load("acme.router.v1", "/p") == {
        away: "failed: ConnectError"}


@pytest.mark.parametrize(("status", "tries"), [(500, 3), (400, 1)])
def test_server_errors_are_retried_and_refusals_are_not(
    failing: str, status: int, tries: int,
) -> None:
    _Failing.status = status
    away = f"http://127.0.0.1:{free_port()}"
    outcomes = Endpoints([failing, away], 2.0, 3).load("acme.router.v1", "/p")
    assert outcomes == {failing: f"failed: load answered HTTP {status}",
                        away: "failed: ConnectError"}
    assert _Failing.posts == ["/v1/load_lora_adapter"] * tries


def test_a_load_the_server_accepts_but_does_not_list_is_a_failure(failing: str) -> None:
    _Failing.status = 200
    assert Endpoints([failing], 2.0, 1).load("acme.router.v1", "/p") == {
        failing: "failed: /v1/models does not list"}
