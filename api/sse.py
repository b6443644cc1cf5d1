"""Server-Sent Events framing for the /execute stream, and a strict parser for its clients.

Each event is exactly two lines and a blank one:

    event: token
    data: {"type": "token", "t": "Hello", "i": 0}

`json.dumps` escapes CR and LF, so the data line can never break the framing, whatever text the
model produces. The parser is deliberately strict (tests, benchmarks, the e2e test use it): any
line it does not expect is an error, not something to skip over.
"""

from __future__ import annotations

import json

import attrs

EVENT_TYPES = frozenset({"started", "token", "end", "error"})
TERMINAL_TYPES = frozenset({"end", "error"})
CONTENT_TYPE = "text/event-stream; charset=utf-8"


def encode_event(event_type: str, data: dict) -> bytes:
    """One SSE event: `event:` line, `data:` line (JSON that also carries "type"), blank line."""
    if event_type not in EVENT_TYPES:
        raise ValueError(f"unknown event type {event_type!r}")
    payload = json.dumps({"type": event_type, **data}, ensure_ascii=False, separators=(",", ":"))
    return f"event: {event_type}\ndata: {payload}\n\n".encode()


class SSEProtocolError(ValueError):
    """The byte stream is not a well-formed /execute event stream."""


@attrs.frozen
class SSEEvent:
    event: str
    data: dict


class SSEParser:
    """Incremental, strict parser: `feed(bytes)` returns the events completed by those bytes.

    Accepts only `event:`/`data:` pairs (one each, in that order) and comment lines starting
    with ':' (keep-alives); checks the data is a JSON object whose "type" equals the event name.
    `close()` fails if a partial event is left over.
    """

    def __init__(self) -> None:
        self._buffer = b""
        self._event: str | None = None
        self._data: dict | None = None

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        self._buffer += chunk
        events: list[SSEEvent] = []
        while b"\n" in self._buffer:
            raw, self._buffer = self._buffer.split(b"\n", 1)
            if raw.endswith(b"\r"):
                raise SSEProtocolError("CR in line ending; the worker sends bare LF")
            event = self._line(raw.decode("utf-8"))
            if event is not None:
                events.append(event)
        return events

    def close(self) -> None:
        if self._buffer or self._event is not None or self._data is not None:
            raise SSEProtocolError("stream ended in the middle of an event")

    def _line(self, line: str) -> SSEEvent | None:
        if line == "":
            if self._event is None and self._data is None:
                raise SSEProtocolError("blank line outside an event")
            if self._event is None or self._data is None:
                raise SSEProtocolError("event without both an event: and a data: line")
            event = SSEEvent(self._event, self._data)
            self._event = self._data = None
            return event
        if line.startswith(":"):
            if self._event is not None or self._data is not None:
                raise SSEProtocolError("comment inside an event")
            return None
        field, sep, value = line.partition(": ")
        if not sep:
            raise SSEProtocolError(f"malformed line {line!r}")
        if field == "event":
            if self._event is not None or self._data is not None:
                raise SSEProtocolError("event: line must come first, once")
            if value not in EVENT_TYPES:
                raise SSEProtocolError(f"unknown event type {value!r}")
            self._event = value
        elif field == "data":
            if self._event is None or self._data is not None:
                raise SSEProtocolError("data: line must follow the event: line, once")
            try:
                data = json.loads(value)
            except json.JSONDecodeError as error:
                raise SSEProtocolError(f"data is not JSON: {error}") from None
            if not isinstance(data, dict) or data.get("type") != self._event:
                raise SSEProtocolError(f"data type {data!r} does not match event {self._event}")
            self._data = data
        else:
            raise SSEProtocolError(f"unexpected field {field!r}")
        return None


def parse_stream(body: bytes) -> list[SSEEvent]:
    """Parse a complete stream and check its grammar: started, token*, exactly one terminal.

    An `error` may also come first (a job cancelled while queued never starts).
    """
    parser = SSEParser()
    events = parser.feed(body)
    parser.close()
    check_grammar(events)
    return events


def check_grammar(events: list[SSEEvent]) -> None:
    if not events:
        raise SSEProtocolError("empty stream")
    kinds = [e.event for e in events]
    if kinds[-1] not in TERMINAL_TYPES:
        raise SSEProtocolError(f"stream does not end with a terminal event: {kinds[-3:]}")
    if sum(k in TERMINAL_TYPES for k in kinds) != 1:
        raise SSEProtocolError(f"more than one terminal event: {kinds}")
    if kinds == ["error"]:
        return
    if kinds[0] != "started" or kinds.count("started") != 1:
        raise SSEProtocolError(f"stream must open with one started event: {kinds[:3]}")
    for index, event in enumerate(e for e in events if e.event == "token"):
        if event.data.get("i") != index:
            raise SSEProtocolError(f"token index {event.data.get('i')} where {index} was due")
