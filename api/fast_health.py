"""`GET /health` answered at the ASGI layer, before Quart: microseconds, whatever else runs.

Health is polled often (pool managers, load balancers, benchmarks) and must stay fast while a
generation runs. Quart's full request cycle (request object, context, hooks, response object)
costs around a millisecond of Python on the event loop's thread, which competes for the GIL
with the executor thread; this path builds one dict and one JSON string from the cached
`WorkerState` and sends it. Every other request goes to the Quart app unchanged; the Quart
route for /health stays as the reference behaviour (the tests check both agree).
"""

from __future__ import annotations

import json
import re
import uuid

from runtime.state import WorkerState

_CORRELATION_RE = re.compile(rb"[\x21-\x7e]{1,128}")  # as api.app: printable ASCII, no spaces


class HealthFastPath:
    def __init__(self, app, state: WorkerState):
        self.app = app
        self.state = state

    async def __call__(self, scope, receive, send) -> None:
        if (
            scope["type"] != "http"
            or scope["path"] != "/health"
            or scope["method"] not in ("GET", "HEAD")
        ):
            await self.app(scope, receive, send)
            return
        status, body = self.state.health()
        payload = json.dumps(body, separators=(",", ":")).encode()
        correlation = b""
        for name, value in scope["headers"]:
            if name == b"x-correlation-id":
                correlation = value
        if not _CORRELATION_RE.fullmatch(correlation):
            correlation = uuid.uuid4().hex.encode()
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(payload)).encode()),
            (b"cache-control", b"no-store"),
            (b"x-correlation-id", correlation),
        ]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        body_bytes = b"" if scope["method"] == "HEAD" else payload
        await send({"type": "http.response.body", "body": body_bytes, "more_body": False})
