"""Cheap GET routes answered at the ASGI layer, before Quart: `/health` and `/metrics`.

Health and metrics are polled often (pool managers, load balancers, Prometheus) and must stay
cheap while a generation runs. Quart's full request cycle (request object, context, hooks,
response object) costs around a millisecond of Python on the event loop's thread, which
competes for the GIL with the executor thread; these paths build their answer from cached
numbers and send it. Every other request goes to the Quart app unchanged; each fast path also
has a Quart route with the same answer (the reference behaviour; the tests check both agree),
which is also what answers other methods on those paths (405).

A front end names its fast paths when it is installed (`api.app.create_app`): a path and a
function returning (status, content type, body), run on the trio thread.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Mapping

#: () -> (HTTP status, content type, body): must read cached state only, never await
FastRoute = Callable[[], tuple[int, str, bytes]]

_CORRELATION_RE = re.compile(rb"[\x21-\x7e]{1,128}")  # as api.common: printable ASCII, no spaces


class FastPaths:
    def __init__(self, app, routes: Mapping[str, FastRoute]):
        self.quart = app  # the full app, for everything else (and for tests)
        self.routes = dict(routes)

    async def __call__(self, scope, receive, send) -> None:
        route = self.routes.get(scope.get("path")) if scope["type"] == "http" else None
        if route is None or scope["method"] not in ("GET", "HEAD"):
            await self.quart(scope, receive, send)
            return
        status, content_type, payload = route()
        correlation = b""
        for name, value in scope["headers"]:
            if name == b"x-correlation-id":
                correlation = value
        if not _CORRELATION_RE.fullmatch(correlation):
            correlation = uuid.uuid4().hex.encode()
        headers = [
            (b"content-type", content_type.encode()),
            (b"content-length", str(len(payload)).encode()),
            (b"cache-control", b"no-store"),
            (b"x-correlation-id", correlation),
        ]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        body = b"" if scope["method"] == "HEAD" else payload
        await send({"type": "http.response.body", "body": body, "more_body": False})
