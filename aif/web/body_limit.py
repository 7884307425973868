"""The largest request body any route reads (`max_body_bytes`), enforced before it is read.

An ASGI middleware in front of every route: a `Content-Length` over the limit is answered
413 at once, without calling the app or reading a byte of the body; a body without one
(chunked) is counted as it streams in, and the read that goes over the limit raises, so no
route ever holds more than the limit. Either way the answer is a problem document that
names the limit and its setting.

Routes that stream a larger body themselves, with a limit of their own (uploads:
`max_upload_bytes` and the tenant's dataset quota, in `aif.web.routes.files`), are named by
method and path and left to it.
"""

from __future__ import annotations

from collections.abc import Iterable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from aif.web.deps import Problem, problem_response

SETTING = "AIF_MAX_BODY_BYTES"


def too_large(limit: int) -> Problem:
    # The rest of the body is never read, so the connection cannot carry another request.
    return Problem(413, "Content too large", f"body: larger than the limit of {limit} bytes "
                   f"({SETTING})", field="body", headers={"Connection": "close"})


class BodyLimit:
    """Refuse request bodies over `limit` bytes with 413, except on `own_limit` routes
    ((method, path) pairs that count their body against a limit of their own)."""

    def __init__(self, app: ASGIApp, limit: int,
                 own_limit: Iterable[tuple[str, str]] = ()) -> None:
        self.app, self.limit, self.own_limit = app, limit, frozenset(own_limit)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or (scope["method"], scope["path"]) in self.own_limit:
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.limit:
            await self._refuse(scope, receive, send)  # not a byte of the body was read
            return
        received, started = 0, False

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise too_large(self.limit)
            return message

        async def sending(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted, sending)
        except Problem as exc:
            # The route's own handlers answer a Problem; this is for one raised where none
            # catches it (a body read by middleware, or after the handlers ran).
            if started or exc.status_code != 413:
                raise
            await self._refuse(scope, receive, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        await problem_response(too_large(self.limit))(scope, receive, send)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            return int(value) if value.isdigit() else None
    return None
