"""The pool's event stream: state changes and load progress, fanned out to SSE subscribers.

`publish` never blocks and never fails the pool: each subscriber has a bounded buffer, and one
that falls `SUBSCRIBER_BUFFER` events behind is dropped (its stream ends with an `overflow`
event; it reconnects and reads `/v2/state` again) instead of slowing the pool for everyone.
Every event carries a sequence number (`seq`, also the SSE `id:`) and a UTC timestamp.

SSE framing, as the worker's /execute stream: an `id:` line, an `event:` line, one `data:` line
of JSON whose "type" repeats the event name, a blank line. `json.dumps` escapes newlines, so a
reason or a log line can never break the framing.
"""

from __future__ import annotations

import json
from typing import Any

import trio

from pool_managerd.state import utc_now_iso

SUBSCRIBER_BUFFER = 1024
CONTENT_TYPE = "text/event-stream; charset=utf-8"
EVENT_TYPES = frozenset(
    {"snapshot", "worker_status", "worker_load_progress", "model_preload", "overflow"}
)


def encode_sse(event: dict[str, Any]) -> bytes:
    kind = event["type"]
    if kind not in EVENT_TYPES:
        raise ValueError(f"unknown pool event type {kind!r}")
    payload = json.dumps(event, ensure_ascii=False, separators=(",", ":"), default=str)
    return f"id: {event.get('seq', 0)}\nevent: {kind}\ndata: {payload}\n\n".encode()


class Subscription:
    """One SSE client: its channel ends when the pool stops or when it fell too far behind."""

    def __init__(self) -> None:
        self.send, self.receive = trio.open_memory_channel(SUBSCRIBER_BUFFER)
        self.overflowed = False


class EventBus:
    def __init__(self) -> None:
        self._seq = 0
        self._subscribers: set[Subscription] = set()

    @property
    def seq(self) -> int:
        """The sequence number of the last event published."""
        return self._seq

    @property
    def subscribers(self) -> int:
        return len(self._subscribers)

    def publish(self, kind: str, **data: Any) -> dict[str, Any]:
        if kind not in EVENT_TYPES:
            raise ValueError(f"unknown pool event type {kind!r}")
        self._seq += 1
        event = {"type": kind, "seq": self._seq, "ts": utc_now_iso(), **data}
        for sub in list(self._subscribers):
            try:
                sub.send.send_nowait(event)
            except trio.WouldBlock:
                sub.overflowed = True
                self.unsubscribe(sub)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                self.unsubscribe(sub)
        return event

    def subscribe(self) -> Subscription:
        sub = Subscription()
        self._subscribers.add(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        self._subscribers.discard(sub)
        sub.send.close()

    def close_all(self) -> None:
        """End every stream (the pool is stopping)."""
        for sub in list(self._subscribers):
            self.unsubscribe(sub)

    async def stream(self, sub: Subscription, first: dict[str, Any], keepalive_s: float):
        """The SSE body: `first` (a snapshot), then every event; a comment as keep-alive.

        A client that fell behind gets a last `overflow` event (the buffer was full, so it
        could not be queued behind the rest; it is written here once the channel is drained).
        """
        try:
            yield encode_sse(first)
            while True:
                with trio.move_on_after(keepalive_s) as idle:
                    try:
                        event = await sub.receive.receive()
                    except trio.EndOfChannel:
                        break
                if idle.cancelled_caught:
                    yield b": keep-alive\n\n"
                    continue
                yield encode_sse(event)
            if sub.overflowed:
                yield encode_sse(
                    {
                        "type": "overflow",
                        "seq": self._seq,
                        "ts": utc_now_iso(),
                        "dropped_after": SUBSCRIBER_BUFFER,
                    }
                )
        finally:
            self.unsubscribe(sub)  # a client that went away stops receiving at once
