"""A strict reader of OpenAI's streamed answers, and the contract every stream must keep.

Written from OpenAI's API reference, not from our encoder: each event is exactly one
`data: <json>` line and a blank line (LF only, no `event:` lines, which OpenAI's clients do not
expect), the last one is `data: [DONE]`. `check_stream` then checks the chunk grammar that
clients rely on (specs/openai-api.md OAI-3). The api tests, the e2e tests and
bench/bench_openai_stream.py use it.
"""

from __future__ import annotations

import json

DONE = "[DONE]"


class OpenAIStreamError(AssertionError):
    """The bytes are not a well-formed OpenAI event stream."""


class ChunkReader:
    """Incremental: `feed(bytes)` returns the events completed by those bytes (dicts, or DONE)."""

    def __init__(self) -> None:
        self._buffer = b""
        self.events: list[dict | str] = []

    def feed(self, data: bytes) -> list[dict | str]:
        self._buffer += data
        out: list[dict | str] = []
        while b"\n\n" in self._buffer:
            block, self._buffer = self._buffer.split(b"\n\n", 1)
            out.append(_event(block))
        self.events += out
        return out

    def close(self) -> list[dict | str]:
        if self._buffer:
            raise OpenAIStreamError(f"stream ended inside an event: {self._buffer[:200]!r}")
        return self.events


def _event(block: bytes) -> dict | str:
    if b"\r" in block:
        raise OpenAIStreamError("CR in the stream; LF line endings expected")
    text = block.decode("utf-8")
    if "\n" in text or not text.startswith("data: "):
        raise OpenAIStreamError(f"an event must be one 'data: ' line: {text[:200]!r}")
    payload = text.removeprefix("data: ")
    if payload == DONE:
        return DONE
    try:
        value = json.loads(payload)
    except ValueError as error:
        raise OpenAIStreamError(f"data is not JSON: {payload[:200]!r}") from error
    if not isinstance(value, dict):
        raise OpenAIStreamError(f"data is not an object: {payload[:200]!r}")
    return value


def parse_stream(raw: bytes) -> list[dict | str]:
    reader = ChunkReader()
    reader.feed(raw)
    return reader.close()


def check_stream(events: list[dict | str], kind: str, *, include_usage: bool = False) -> dict:
    """The chunk grammar; returns {"id", "text", "finish_reason", "usage", "error"}.

    chat:       role chunk, content chunks, one chunk with finish_reason, [usage chunk], [DONE]
    completion: text chunks, one chunk with finish_reason, [usage chunk], [DONE]
    or, after any prefix of that without the finish: one {"error": {...}} event, then [DONE].
    """
    if not events or events[-1] != DONE or events.count(DONE) != 1:
        raise OpenAIStreamError(f"the stream must end with one data: [DONE]: {events[-2:]}")
    body = events[:-1]
    error = None
    if body and "error" in body[-1]:
        error = body.pop()["error"]
        if set(error) != {"message", "type", "param", "code"}:
            raise OpenAIStreamError(f"error object fields: {sorted(error)}")
    obj = "chat.completion.chunk" if kind == "chat" else "text_completion"
    if any("error" in chunk for chunk in body):
        raise OpenAIStreamError("an error event before the end")
    if not body:
        raise OpenAIStreamError("no chunk at all")
    ids = {(c["id"], c["created"], c["model"]) for c in body}
    if len(ids) != 1 or any(c["object"] != obj for c in body):
        raise OpenAIStreamError(f"chunks must share id/created/model and be {obj}: {ids}")
    usage = None
    if include_usage and error is None:
        last = body.pop()
        if last["choices"] != [] or not isinstance(last.get("usage"), dict):
            raise OpenAIStreamError(f"the usage chunk must come last, with no choices: {last}")
        usage = last["usage"]
        if usage["total_tokens"] != usage["prompt_tokens"] + usage["completion_tokens"]:
            raise OpenAIStreamError(f"usage does not add up: {usage}")
    for chunk in body:
        if include_usage and chunk.get("usage", "absent") is not None:
            raise OpenAIStreamError(f"with include_usage, other chunks carry usage null: {chunk}")
        if not include_usage and "usage" in chunk:
            raise OpenAIStreamError(f"usage without include_usage: {chunk}")
        if len(chunk["choices"]) != 1 or chunk["choices"][0]["index"] != 0:
            raise OpenAIStreamError(f"one choice, index 0, per chunk: {chunk}")
    choices = [c["choices"][0] for c in body]
    finishes = [c["finish_reason"] for c in choices]
    finish = None
    if error is None:
        finish = finishes[-1]
        if finish not in ("stop", "length"):
            raise OpenAIStreamError(f"the last chunk's finish_reason: {finish!r}")
        finishes = finishes[:-1]
    if any(f is not None for f in finishes):
        raise OpenAIStreamError(f"finish_reason must be null until the last chunk: {finishes}")
    if kind == "chat":
        if choices[0]["delta"] != {"role": "assistant", "content": ""}:
            raise OpenAIStreamError(f"the first delta carries the role: {choices[0]}")
        if any("role" in c["delta"] for c in choices[1:]):
            raise OpenAIStreamError("the role comes once")
        if error is None and choices[-1]["delta"] != {}:
            raise OpenAIStreamError(f"the finishing chunk's delta is empty: {choices[-1]}")
        text = "".join(c["delta"].get("content", "") for c in choices)
    else:
        text = "".join(c["text"] for c in choices)
    return {
        "id": body[0]["id"],
        "text": text,
        "finish_reason": finish,
        "usage": usage,
        "error": error,
    }
