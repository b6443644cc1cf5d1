"""A raw HTTP/1.x client over trio sockets, for attacks a well-behaved client cannot make.

Requests are bytes the test writes itself (split writes, pipelining, HTTP/1.0, half-closes,
trickled bytes); responses are parsed just enough to tell them apart: status, headers, a body
framed by Content-Length or chunked encoding (or by the close, for HTTP/1.0 style answers).
`closed_within` tells whether the server closed the connection; `RawConnection.hang_up()` and
`.half_close()` are the two ways a client leaves.
"""

from __future__ import annotations

import json
import socket

import attrs
import trio


@attrs.define
class RawResponse:
    status: int
    headers: dict[str, str]  # lower-case names; the last value of a repeated header
    body: bytes

    def json(self) -> dict:
        return json.loads(self.body)

    @property
    def closes(self) -> bool:
        return "close" in self.headers.get("connection", "").lower()


def request_bytes(
    method: str,
    path: str,
    body: bytes | dict | None = None,
    *,
    version: str = "1.1",
    headers: dict[str, str] | None = None,
) -> tuple[bytes, bytes]:
    """(head, body) of a request; a dict body is JSON with its Content-Type and length."""
    if isinstance(body, dict):
        body = json.dumps(body).encode()
    fields = {"Host": "127.0.0.1"}
    if body is not None:
        fields["Content-Type"] = "application/json"
        fields["Content-Length"] = str(len(body))
    fields.update(headers or {})
    lines = [f"{method} {path} HTTP/{version}"] + [f"{k}: {v}" for k, v in fields.items() if v]
    return ("\r\n".join(lines) + "\r\n\r\n").encode(), body or b""


class RawConnection:
    """One TCP connection; reads are buffered so several responses can be parsed in order."""

    def __init__(self, stream: trio.SocketStream):
        self.stream = stream
        self.buffer = b""
        self.eof = False

    @classmethod
    async def open(cls, base_url: str) -> RawConnection:
        host, port = base_url.removeprefix("http://").rstrip("/").rsplit(":", 1)
        return cls(await trio.open_tcp_stream(host, int(port)))

    async def send(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def more(self) -> bool:
        if self.eof:
            return False
        try:
            chunk = await self.stream.receive_some(65536)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            chunk = b""
        if not chunk:
            self.eof = True
            return False
        self.buffer += chunk
        return True

    async def _take_line(self) -> bytes:
        while b"\r\n" not in self.buffer:
            if not await self.more():
                raise EOFError(f"connection closed inside a line: {self.buffer[:200]!r}")
        line, self.buffer = self.buffer.split(b"\r\n", 1)
        return line

    async def _take(self, n: int) -> bytes:
        while len(self.buffer) < n:
            if not await self.more():
                raise EOFError(f"connection closed {n - len(self.buffer)} bytes short")
        out, self.buffer = self.buffer[:n], self.buffer[n:]
        return out

    async def read_response(self, *, head_only: bool = False) -> RawResponse:
        """The next whole response; `head_only` stops after the headers (a stream goes on)."""
        status_line = await self._take_line()
        status = int(status_line.split()[1])
        headers: dict[str, str] = {}
        while line := await self._take_line():
            name, _, value = line.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        if head_only:
            return RawResponse(status, headers, b"")
        if "content-length" in headers:
            body = await self._take(int(headers["content-length"]))
        elif headers.get("transfer-encoding", "").lower() == "chunked":
            body = b""
            while size := int((await self._take_line()).split(b";")[0], 16):
                body += await self._take(size)
                await self._take_line()
            await self._take_line()
        else:
            while await self.more():
                pass
            body, self.buffer = self.buffer, b""
        return RawResponse(status, headers, body)

    async def read_until(self, *markers: bytes) -> bytes:
        """Read until one of `markers` was received (or the connection closed); all so far."""
        while not any(m in self.buffer for m in markers) and await self.more():
            pass
        return self.buffer

    async def closed_within(self, seconds: float) -> bool:
        """True when the server closes the connection within `seconds` (unread bytes skipped)."""
        with trio.move_on_after(seconds):
            while await self.more():
                pass
            return True
        return False

    async def half_close(self) -> None:
        """shutdown(SHUT_WR): "no more requests", the client still reads."""
        self.stream.socket.shutdown(socket.SHUT_WR)

    async def hang_up(self) -> None:
        await self.stream.aclose()

    async def __aenter__(self) -> RawConnection:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.stream.aclose()


async def exchange(base_url: str, head: bytes, body: bytes = b"") -> RawResponse:
    """One request on a fresh connection, in one write; its response (no body for HEAD)."""
    async with await RawConnection.open(base_url) as conn:
        await conn.send(head + body)
        return await conn.read_response(head_only=head.startswith(b"HEAD "))
