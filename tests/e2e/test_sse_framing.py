"""The e2e SSE parser and stream checker must themselves catch every malformed stream."""

from __future__ import annotations

import json

import pytest

from tests.e2e.conftest import SSEFramingError, SSEParser, check_stream, parse_sse


def ev(name: str, **data) -> str:
    return f"event: {name}\ndata: {json.dumps({'type': name, **data})}\n\n"


GOOD = (
    ev("started", job_id="j", model="m", started_at="t", seed=1, prompt_tokens=3)
    + ev("token", t="Hel", i=0)
    + ev("token", t="lo", i=1)
    + ev("end", tokens_out=2, decode_time_ms=5.0, stop_reason="max_tokens")
)


def test_a_good_stream_parses_whole_and_in_arbitrary_chunks():
    events = parse_sse(GOOD)
    check_stream(events)
    assert [name for name, _ in events] == ["started", "token", "token", "end"]
    assert "".join(d["t"] for n, d in events if n == "token") == "Hello"

    for size in (1, 2, 7, 50):
        parser = SSEParser()
        for start in range(0, len(GOOD), size):
            parser.feed(GOOD[start : start + size])
        assert parser.close() == events


def test_crlf_comments_and_ids_are_accepted():
    text = ": keep-alive\n\n" + GOOD.replace("\n", "\r\n").replace(
        "event: end", "id: 9\nevent: end"
    )
    assert [n for n, _ in parse_sse(text)] == ["started", "token", "token", "end"]


def test_an_error_stream_without_started_is_well_formed():
    check_stream(parse_sse(ev("error", code="CANCELLED", message="cancelled", retriable=False)))


@pytest.mark.parametrize(
    "text",
    [
        "event: token\n\n",  # no data
        'data: {"type": "token", "t": "a", "i": 0}\n\n',  # no event line
        "event: token\ndata: not json\n\n",
        'event: token\ndata: {"type": "end"}\n\n',  # type mismatch
        'event: token\ndata: {"t": "a", "i": 0}\n\n',  # no type
        'event: token\nevent: token\ndata: {"type": "token"}\n\n',  # two event lines
        'event: token\ndata: {"type": "token"}\ndata: {"type": "token"}\n\n',  # two data lines
        'event: token\nbogus: 1\ndata: {"type": "token"}\n\n',  # unknown field
        'event: token\ndata: {"type": "token", "t": "a", "i": 0}\n',  # truncated
    ],
)
def test_framing_errors_are_caught(text):
    with pytest.raises(SSEFramingError):
        parse_sse(text)


@pytest.mark.parametrize(
    "text",
    [
        "",  # empty
        ev("started") + ev("token", t="a", i=0),  # no terminal
        GOOD + ev("end", tokens_out=2, decode_time_ms=1, stop_reason="eos"),  # two terminals
        ev("started")
        + ev("end", tokens_out=0, decode_time_ms=0, stop_reason="eos")
        + ev("token", t="a", i=0),
        ev("token", t="a", i=0) + ev("end", tokens_out=1, decode_time_ms=0, stop_reason="eos"),
        ev("started")
        + ev("started")
        + ev("end", tokens_out=0, decode_time_ms=0, stop_reason="eos"),
        ev("started")
        + ev("token", t="a", i=1)
        + ev("end", tokens_out=1, decode_time_ms=0, stop_reason="eos"),
        ev("started")
        + ev("token", t="a", i=0)
        + ev("end", tokens_out=5, decode_time_ms=0, stop_reason="eos"),
        ev("started")
        + ev("token", i=0)
        + ev("end", tokens_out=1, decode_time_ms=0, stop_reason="eos"),
        ev("started") + ev("error", code="INTERNAL"),  # error lacks message/retriable
    ],
)
def test_protocol_shape_errors_are_caught(text):
    with pytest.raises(SSEFramingError):
        check_stream(parse_sse(text))
