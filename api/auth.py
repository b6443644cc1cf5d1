"""Who may talk to the worker: the Host allow-list and the API key (REL-10).

Both are an ASGI layer in front of every front end (the fast paths included), so a route added
later (OpenAI's `/v1/*`) is covered without knowing about them.

- **Host allow-list** (DNS rebinding): a web page on an attacker's domain that resolves to
  127.0.0.1 can make the victim's browser send requests to a worker bound to loopback; the
  browser still sends the attacker's name as `Host`. When the worker listens on a loopback
  address, only `localhost`, `127.0.0.1` and `[::1]` (any port) are answered by default;
  `--allowed-hosts` sets the list for any bind address (`*`: no check). 403 FORBIDDEN_HOST.
- **API key**: with `--api-key` set, every request but `GET /health` needs
  `Authorization: Bearer <key>`, compared in constant time (`hmac.compare_digest`); 401
  UNAUTHORIZED with `WWW-Authenticate: Bearer` otherwise. `/health` stays open so load
  balancers and pool managers can probe without the secret (it says nothing a client could
  misuse: status, model, counters).
The threat model is specs/requirements-reliability.md REL-10.
"""

from __future__ import annotations

import hmac
import ipaddress
from collections.abc import Iterable

from api.guard import send_error
from runtime.errors import ErrorCode, WorkerError

OPEN_PATHS = frozenset({"/health"})
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def default_allowed_hosts(bind_host: str) -> frozenset[str] | None:
    """Loopback binds answer only loopback names; other binds check nothing by default."""
    return frozenset(LOOPBACK_NAMES) if is_loopback(bind_host) else None


def host_name(header: bytes) -> str:
    """`Host` without its port, lower case, IPv6 brackets removed."""
    text = header.decode("latin-1").strip().lower()
    if text.startswith("["):
        return text[1:].split("]", 1)[0]
    return text.rsplit(":", 1)[0] if text.count(":") == 1 else text


class AccessPolicy:
    def __init__(self, app, *, api_key: str | None, allowed_hosts: Iterable[str] | None):
        self.app = app
        self._key = f"Bearer {api_key}".encode() if api_key else None
        self.allowed = (
            None
            if allowed_hosts is None or "*" in allowed_hosts
            else frozenset(h.strip("[]").lower() for h in allowed_hosts)
        )

    def refusal(self, scope) -> WorkerError | None:
        headers = dict(scope.get("headers", ()))
        if self.allowed is not None and host_name(headers.get(b"host", b"")) not in self.allowed:
            return WorkerError(
                "the Host header is not one this worker answers (see --allowed-hosts)",
                code=ErrorCode.FORBIDDEN_HOST,
                field="host",
            )
        if self._key is None or (
            scope["path"] in OPEN_PATHS and scope["method"] in ("GET", "HEAD")
        ):
            return None
        given = headers.get(b"authorization", b"")
        if not hmac.compare_digest(given, self._key):
            return WorkerError(
                "missing or wrong API key (send Authorization: Bearer <key>)",
                code=ErrorCode.UNAUTHORIZED,
                field="authorization",
            )
        return None

    async def __call__(self, scope, receive, send) -> None:
        error = self.refusal(scope) if scope["type"] == "http" else None
        if error is None:
            await self.app(scope, receive, send)
            return
        extra = [(b"www-authenticate", b"Bearer")] if error.code is ErrorCode.UNAUTHORIZED else []
        status = 401 if error.code is ErrorCode.UNAUTHORIZED else 403
        await send_error(send, status, error, extra)
