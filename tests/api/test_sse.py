"""SSE framing: encoder output checked by the strict parser, and the parser's refusals."""

from __future__ import annotations

import json

import pytest

from api.sse import SSEParser, SSEProtocolError, check_grammar, encode_event, parse_stream


def test_event_is_two_lines_and_a_blank_one():
    raw = encode_event("token", {"t": 'a\nb\r\n"c"', "i": 0})
    lines = raw.split(b"\n")
    assert lines[0] == b"event: token"
    assert lines[1].startswith(b"data: ")
    assert lines[2:] == [b"", b""]
    assert json.loads(lines[1][6:]) == {"type": "token", "t": 'a\nb\r\n"c"', "i": 0}


def test_unicode_survives_byte_splits():
    stream = b"".join(
        [
            encode_event("started", {"job_id": "j"}),
            encode_event("token", {"t": "日本😀", "i": 0}),
            encode_event("end", {"tokens_out": 1}),
        ]
    )
    parser = SSEParser()
    events = []
    for k in range(len(stream)):  # one byte at a time: splits inside UTF-8 sequences too
        events += parser.feed(stream[k : k + 1])
    parser.close()
    check_grammar(events)
    assert events[1].data["t"] == "日本😀"


def test_keepalive_comments_are_allowed_between_events():
    stream = b": keep-alive\n\n" + encode_event("error", {"code": "CANCELLED"})
    with pytest.raises(SSEProtocolError):  # the blank line after a comment is outside an event
        parse_stream(stream)
    events = parse_stream(b": keep-alive\n" + encode_event("error", {"code": "CANCELLED"}))
    assert [e.event for e in events] == ["error"]


@pytest.mark.parametrize(
    "raw",
    [
        b"event: token\n\n",  # no data
        b'data: {"type":"token"}\n\n',  # data before event
        b"event: token\nevent: token\n",  # event twice
        b"event: bogus\n",  # unknown type
        b"event: token\ndata: not json\n",
        b'event: token\ndata: {"type":"end"}\n',  # type mismatch
        b'event: token\ndata: {"type":"token"}\r\n',  # CR
        b"retry: 10\n",  # unexpected field
        b"event:token\n",  # no space after the colon
    ],
)
def test_parser_refuses_malformed_framing(raw):
    with pytest.raises(SSEProtocolError):
        SSEParser().feed(raw)


def test_parser_refuses_truncated_stream():
    parser = SSEParser()
    parser.feed(encode_event("started", {})[:-1])
    with pytest.raises(SSEProtocolError):
        parser.close()


@pytest.mark.parametrize(
    "kinds",
    [
        [],
        ["started", "token"],  # no terminal
        ["started", "end", "end"],
        ["started", "end", "token"],
        ["token", "end"],  # no started
        ["started", "error", "end"],
    ],
)
def test_grammar_refusals(kinds):
    stream = b"".join(encode_event(k, {"i": 0} if k == "token" else {}) for k in kinds)
    with pytest.raises(SSEProtocolError):
        parse_stream(stream)


def test_grammar_token_indices_must_count_up():
    stream = b"".join(
        [
            encode_event("started", {}),
            encode_event("token", {"t": "", "i": 1}),
            encode_event("end", {}),
        ]
    )
    with pytest.raises(SSEProtocolError):
        parse_stream(stream)
