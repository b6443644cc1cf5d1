"""The connection guard: the ASGI layer around every front end that keeps HTTP honest.

Hypercorn and quart-trio, as we use them, leave four holes that a hostile or careless client
walks through (issue 10; specs/requirements-reliability.md REL-1, REL-3, REL-4):

- **Abandoned work.** Quart cancels a request's handler when the client goes away, but a
  streamed response cleans up in its body generator's `finally`, which never runs if the
  generator had not started (the hang-up came while the handler awaited the tokenizer, or after
  it returned and before the first write). A front end hands the guard what must happen when
  the request ends, whatever stage it is at (`on_request_end`); the guard runs it when the ASGI
  call returns, is cancelled or fails.
- **Connections that never close.** On the client's `Connection: close` (or HTTP/1.0), or when
  the body was not read (a 404 before the body arrived), hypercorn closes the socket from inside
  the app's last `send` - and quart-trio cancels the app as soon as hypercorn reports the
  stream closed, which aborts that very close (hypercorn #330): the connection stays open and a
  keep-alive client hangs. The guard sends the last body message shielded from cancellation.
- **Unread bodies.** A response that starts before its request body was read says
  `Connection: close`, so the client does not send its next request into a dead stream.
- **Trickled bodies.** The whole body must arrive within `body_timeout_s` of the request head;
  otherwise the handler is cancelled and the client gets 408 REQUEST_TIMEOUT and a close.
"""

from __future__ import annotations

import json
from collections.abc import Callable

import trio

from runtime.errors import ErrorCode, WorkerError

EXTENSION = "worker_orcd.on_request_end"


def on_request_end(scope: dict, callback: Callable[[], None]) -> None:
    """Run `callback` (sync, must not raise) when the request ends, however it ends."""
    scope["extensions"][EXTENSION].append(callback)


def client_wants_close(scope: dict) -> bool:
    """HTTP/1.0 without keep-alive, or `Connection: close` (RFC 9112 section 9.3)."""
    tokens: set[str] = set()
    for name, value in scope.get("headers", ()):
        if name.lower() == b"connection":
            tokens.update(t.strip() for t in value.decode("latin-1").lower().split(","))
    if scope.get("http_version") == "1.0":
        return "keep-alive" not in tokens
    return "close" in tokens


def _with_close(headers) -> list:
    kept = [(n, v) for n, v in headers if n.lower() != b"connection"]
    return [*kept, (b"connection", b"close")]


async def send_error(send, status: int, error: WorkerError, headers=()) -> None:
    """A whole JSON error response (the body `api.errors` would give) from the ASGI layer."""
    body = json.dumps(error.to_body(), separators=(",", ":")).encode()
    start = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        *headers,
    ]
    await send({"type": "http.response.start", "status": status, "headers": start})
    await send({"type": "http.response.body", "body": body})


class ConnectionGuard:
    def __init__(self, app, *, quart, body_timeout_s: float):
        self.app = app
        self.quart = quart  # the Quart app inside (tests use its test client)
        self.body_timeout_s = body_timeout_s

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        scope.setdefault("extensions", {})[EXTENSION] = callbacks = []
        try:
            await _Exchange(self, scope, receive, send).run()
        finally:
            for callback in reversed(callbacks):
                callback()


class _Exchange:
    """One request's pass through the guard."""

    def __init__(self, guard: ConnectionGuard, scope, receive, send):
        self.guard, self.scope = guard, scope
        self._receive, self._send = receive, send
        self.close_after = client_wants_close(scope)
        self.body_done = scope.get("method") in ("GET", "HEAD")
        self.started = self.timed_out = False
        self.deadline = trio.current_time() + guard.body_timeout_s
        self.cancel_scope = trio.CancelScope()

    async def run(self) -> None:
        with self.cancel_scope:
            await self.guard.app(self.scope, self.receive, self.send)
        if self.timed_out and not self.started:
            limit = self.guard.body_timeout_s
            error = WorkerError(
                f"the request body did not arrive within {limit:g} s (--body-timeout)",
                code=ErrorCode.REQUEST_TIMEOUT,
            )
            with trio.CancelScope(shield=True):
                await send_error(self._send, 408, error, [(b"connection", b"close")])

    async def receive(self):
        if self.body_done:
            return await self._receive()
        with trio.move_on_at(self.deadline):
            message = await self._receive()
            if message["type"] != "http.request" or not message.get("more_body", False):
                self.body_done = True
            return message
        self.timed_out = True
        self.cancel_scope.cancel()
        await trio.lowlevel.checkpoint()  # raises Cancelled: the handler ends here
        raise AssertionError("unreachable")

    async def send(self, message) -> None:
        if message["type"] == "http.response.start":
            self.started = True
            if self.close_after or not self.body_done:
                message = {**message, "headers": _with_close(message.get("headers", ()))}
        last = message["type"] == "http.response.body" and not message.get("more_body", False)
        if last:
            # hypercorn closes the connection inside this call; quart-trio's cancellation
            # (the stream is reported closed) must not abort that close half-way.
            with trio.CancelScope(shield=True):
                await self._send(message)
        else:
            await self._send(message)
