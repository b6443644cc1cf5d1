"""OpenAI's wire format: completion objects, streamed chunks, and the error envelope.

Streamed (`stream: true`), one response is, in this order (specs/openai-api.md, OAI-3):

    data: {"id": ID, "object": "chat.completion.chunk", "created": T, "model": M,
           "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""},
                        "logprobs": null, "finish_reason": null}]}        chat only, at start
    data: {... "choices": [{"index": 0, "delta": {"content": "Hel"}, ..., "finish_reason": null}]}
    data: {... "choices": [{"index": 0, "delta": {}, ..., "finish_reason": "stop"}]}   the end
    data: {... "choices": [], "usage": {...}}                      only with include_usage
    data: [DONE]

(`/v1/completions` chunks are `text_completion` objects with `"text"` in place of `"delta"`.)
With include_usage every other chunk carries `"usage": null`, as OpenAI's do. An error after the
stream started is one `data: {"error": {...}}` event, then `data: [DONE]`: the official clients
raise it as an `APIError` (a non-standard `event:` line would be dropped silently by them).

The per-token chunk is two constant byte strings around the JSON-escaped text, built once per
response, so a token costs one `json.dumps` of its text and a join: the stream keeps pace with
the engine (bench/bench_openai_stream.py).
"""

from __future__ import annotations

import json

from actors.service import End, Failed, JobEvent, Started, Token
from api.openai_schema import Kind
from runtime.errors import ErrorCode

DONE = b"data: [DONE]\n\n"
FINISH_REASON = {"eos": "stop", "stop_sequence": "stop", "max_tokens": "length"}
OBJECT = {"chat": "chat.completion", "completion": "text_completion"}
CHUNK_OBJECT = {"chat": "chat.completion.chunk", "completion": "text_completion"}
#: The worker's codes a client caused (4xx); every other code is OpenAI's "server_error".
CLIENT_CODES = frozenset(
    {
        ErrorCode.INVALID_REQUEST,
        ErrorCode.NOT_FOUND,
        ErrorCode.CONFLICT,
        ErrorCode.PAYLOAD_TOO_LARGE,
    }
)


def _json(value: object) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def error_body(code: ErrorCode, message: str, param: str | None = None) -> dict:
    """OpenAI's envelope; `code` is the worker's stable code (runtime/errors.py), `type` its
    OpenAI class: "invalid_request_error" for what the client can fix, else "server_error"."""
    kind = "invalid_request_error" if code in CLIENT_CODES else "server_error"
    return {"error": {"message": message, "type": kind, "param": param, "code": str(code)}}


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def completion_body(kind: Kind, head: dict, text: str, end: End, prompt_tokens: int) -> dict:
    """The non-streamed answer: one choice, the whole text, finish_reason and usage."""
    finish = FINISH_REASON[end.stop_reason]
    if kind == "chat":
        choice = {"index": 0, "message": {"role": "assistant", "content": text}}
    else:
        choice = {"index": 0, "text": text}
    choice.update(logprobs=None, finish_reason=finish)
    body = _envelope(OBJECT[kind], head)
    return {**body, "choices": [choice], "usage": usage(prompt_tokens, end.tokens_out)}


def _envelope(obj: str, head: dict) -> dict:
    """id, object, created, model: the fields every object of one response shares."""
    return {"id": head["id"], "object": obj, "created": head["created"], "model": head["model"]}


class ChunkEncoder:
    """A batch of job events -> the SSE bytes of OpenAI's chunks, for one streamed response."""

    def __init__(self, kind: Kind, head: dict, *, include_usage: bool):
        self.kind, self.include_usage = kind, include_usage
        opening = _json(_envelope(CHUNK_OBJECT[kind], head))
        self._open = "data: " + opening[:-1] + ',"choices":['  # up to the choice
        self._choice = '{"index":0,' + ('"delta":{"content":' if kind == "chat" else '"text":')
        close_text = "}" if kind == "chat" else ""
        self._token_tail = (
            close_text
            + ',"logprobs":null,"finish_reason":null}]'
            + (',"usage":null' if include_usage else "")
            + "}\n\n"
        )
        self.prompt_tokens = 0

    def _chunk(self, choice: str) -> str:
        usage_null = ',"usage":null' if self.include_usage else ""
        return f"{self._open}{choice}]{usage_null}}}\n\n"

    def __call__(self, batch: list[JobEvent]) -> bytes:
        out: list[str] = []
        for event in batch:
            if isinstance(event, Token):
                if event.text:  # "" is text held back (a stop string, a split character)
                    out.append(self._open + self._choice + _json(event.text) + self._token_tail)
            elif isinstance(event, Started):
                self.prompt_tokens = event.prompt_tokens
                if self.kind == "chat":  # the role comes first, once
                    out.append(
                        self._chunk(
                            '{"index":0,"delta":{"role":"assistant","content":""},'
                            '"logprobs":null,"finish_reason":null}'
                        )
                    )
            elif isinstance(event, End):
                out.append(self._end(event))
            else:
                assert isinstance(event, Failed)
                out.append("data: " + _json(error_body(event.code, event.message)) + "\n\n")
                out.append(DONE.decode())
        return "".join(out).encode()

    def _end(self, end: End) -> str:
        empty = '"delta":{}' if self.kind == "chat" else '"text":""'
        finish = FINISH_REASON[end.stop_reason]
        last = self._chunk(f'{{"index":0,{empty},"logprobs":null,"finish_reason":"{finish}"}}')
        if self.include_usage:
            counts = _json(usage(self.prompt_tokens, end.tokens_out))
            last += f'{self._open}],"usage":{counts}}}\n\n'
        return last + DONE.decode()
