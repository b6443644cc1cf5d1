"""OpenAI's request bodies (/v1/chat/completions, /v1/completions) -> the core's `GenerationRequest`.

The field mapping is specs/openai-api.md's table. In short: a JSON `null` means "not given"
(OpenAI's fields are nullable); sampling fields and stop strings go through the native
validator (`api.validation.validate_sampling`: same ranges, same messages); parameters we cannot
honour exactly (`n` > 1, tools, response formats, logprobs, non-zero frequency/presence
penalties, ...) are a 400 naming the parameter, never silently ignored; fields that do not
change what is generated (`user`, `metadata`, `store`, ...) are accepted; any other field is a
400, as OpenAI's own API answers an unrecognized argument.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Literal

import attrs

from api.validation import (
    MAX_PROMPT_CHARS,
    ROLES,
    check_utf8,
    float_field,
    int_field,
    messages_of,
    validate_sampling,
)
from runtime.errors import ErrorCode, InvalidRequest, WorkerError
from runtime.models.catalog import CATALOG
from runtime.request import ChatMessage, GenerationRequest

Kind = Literal["chat", "completion"]
MAX_TOKENS_LIMIT = 2**31 - 1  # beyond the int32 the engines count in; the context binds first

SAMPLING = frozenset(
    {"temperature", "top_p", "seed", "stop", "top_k", "min_p", "repetition_penalty"}
)
COMMON = SAMPLING | {"model", "max_tokens", "stream", "stream_options", "user"}
#: Accepted and without effect on the tokens: bookkeeping for the client or OpenAI's platform.
NO_EFFECT = frozenset(
    {"metadata", "store", "service_tier", "parallel_tool_calls", "safety_identifier",
     "prompt_cache_key"}
)  # fmt: skip


def _is(*allowed: object) -> Callable[[object], bool]:
    return lambda value: any(value == a and type(value) is type(a) for a in allowed)


def _empty(value: object) -> bool:
    return value in ([], {})


def _zero(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and value == 0


#: Parameters we do not implement: the values that mean "off" pass, anything else is a 400.
UNSUPPORTED_CHAT: Mapping[str, tuple[Callable[[object], bool], str]] = {
    "n": (_is(1), "only n=1 is supported (one choice per request)"),
    "logprobs": (_is(False), "logprobs are not supported"),
    "top_logprobs": (_is(0), "logprobs are not supported"),
    "logit_bias": (_empty, "logit_bias is not supported"),
    "tools": (_empty, "tool calling is not supported"),
    "tool_choice": (_is("none"), "tool calling is not supported"),
    "functions": (_empty, "function calling is not supported"),
    "function_call": (_is("none"), "function calling is not supported"),
    "response_format": (
        _is({"type": "text"}),
        "only response_format {'type': 'text'} is supported (no JSON mode or schema)",
    ),
    "modalities": (_is(["text"]), "only text output is supported"),
    "audio": (_empty, "audio output is not supported"),
    "prediction": (_empty, "predicted outputs are not supported"),
    "reasoning_effort": (_empty, "reasoning_effort is not supported"),
    "verbosity": (_empty, "verbosity is not supported"),
    "web_search_options": (_empty, "web search is not supported"),
    "frequency_penalty": (_zero, "frequency_penalty is not supported (use repetition_penalty)"),
    "presence_penalty": (_zero, "presence_penalty is not supported (use repetition_penalty)"),
}
UNSUPPORTED_COMPLETION: Mapping[str, tuple[Callable[[object], bool], str]] = {
    **{
        k: UNSUPPORTED_CHAT[k] for k in ("n", "logit_bias", "frequency_penalty", "presence_penalty")
    },
    "logprobs": (_is(0), "logprobs are not supported"),
    "best_of": (_is(1), "only best_of=1 is supported"),
    "echo": (_is(False), "echo is not supported"),
    "suffix": (_is(""), "suffix (insertion) is not supported"),
}
CHAT_FIELDS = COMMON | NO_EFFECT | {"messages", "max_completion_tokens"} | set(UNSUPPORTED_CHAT)
COMPLETION_FIELDS = COMMON | NO_EFFECT | {"prompt"} | set(UNSUPPORTED_COMPLETION)
#: Keys of a chat message besides role and content; `name` and `tool_call_id` do not reach the
#: template (the ChatMessage has role and content only), `refusal` must be null.
MESSAGE_EXTRA = frozenset({"name", "tool_call_id", "refusal"})


@attrs.frozen
class OpenAIRequest:
    kind: Kind
    generation: GenerationRequest
    stream: bool
    include_usage: bool


@attrs.frozen
class ServedModel:
    """The id /v1/models lists (the catalog name when the file is a catalog model's, else the
    file stem) and every id a request may name (both, for a catalog file)."""

    id: str
    accepted: frozenset[str]

    @classmethod
    def from_stem(cls, stem: str) -> ServedModel:
        for entry in CATALOG.values():
            if entry.filename.removesuffix(".gguf") == stem:
                return cls(entry.name, frozenset({entry.name, stem}))
        return cls(stem, frozenset({stem}))


class ModelNotFound(WorkerError):
    code = ErrorCode.NOT_FOUND


def parse_request(kind: Kind, raw: dict, model: ServedModel, job_id: str) -> OpenAIRequest:
    """Check a /v1 body; raises `InvalidRequest` (400) or `ModelNotFound` (404) naming the field."""
    body = {key: value for key, value in raw.items() if value is not None}
    allowed, unsupported = (
        (CHAT_FIELDS, UNSUPPORTED_CHAT) if kind == "chat" else (COMPLETION_FIELDS, UNSUPPORTED_COMPLETION)
    )  # fmt: skip
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise InvalidRequest(f"unrecognized request argument: {unknown[0]!r}", field=unknown[0])
    for name, (off, why) in unsupported.items():
        if name in body and not off(body[name]):
            if name.endswith("_penalty"):  # a bad number says so before "not supported"
                float_field(body, name, 0.0, -2.0, 2.0, lo_open=False)
            raise InvalidRequest(f"{name}: {why}", field=name)
    name = body.get("model", model.id)
    if not isinstance(name, str):
        raise InvalidRequest("model must be a string", field="model")
    if name not in model.accepted:
        raise ModelNotFound(
            f"the model {name[:200]!r} does not exist here; this worker serves {model.id!r}",
            field="model",
        )
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise InvalidRequest("stream must be a boolean", field="stream")
    include_usage = _stream_options(body, stream)
    for key in ("user", "service_tier", "safety_identifier", "prompt_cache_key"):
        if key in body and not isinstance(body[key], str):
            raise InvalidRequest(f"{key} must be a string", field=key)
    if "metadata" in body and not isinstance(body["metadata"], dict):
        raise InvalidRequest("metadata must be an object", field="metadata")

    prompt, messages = None, None
    if kind == "chat":
        messages = messages_of(body.get("messages"), _message)
    else:
        prompt = _prompt(body.get("prompt"))
    max_tokens = _max_tokens(body)
    params, stop = validate_sampling({k: body[k] for k in SAMPLING if k in body})
    generation = GenerationRequest(job_id, prompt, messages, max_tokens, params, stop)
    return OpenAIRequest(kind, generation, stream, include_usage)


def _stream_options(body: dict, stream: bool) -> bool:
    options = body.get("stream_options")
    if options is None:
        return False
    if not stream:
        raise InvalidRequest(
            "stream_options is only allowed with stream=true", field="stream_options"
        )
    if not isinstance(options, dict) or set(options) - {"include_usage", "include_obfuscation"}:
        raise InvalidRequest(
            "stream_options must be an object with include_usage", field="stream_options"
        )
    include = options.get("include_usage", False)
    if not isinstance(include, bool):
        raise InvalidRequest(
            "stream_options.include_usage must be a boolean", field="stream_options.include_usage"
        )
    return include


def _max_tokens(body: dict) -> int | None:
    """max_completion_tokens (chat's current name) or max_tokens; None: up to the context."""
    given = [n for n in ("max_completion_tokens", "max_tokens") if n in body]
    values = [int_field(body, n, None, 1, MAX_TOKENS_LIMIT) for n in given]
    if len(values) == 2 and values[0] != values[1]:
        raise InvalidRequest(
            "max_tokens and max_completion_tokens disagree; send one of them", field="max_tokens"
        )
    return values[0] if values else None


def _prompt(value: object) -> str:
    if isinstance(value, list) and len(value) == 1 and isinstance(value[0], str):
        value = value[0]  # a list of one string is the same prompt
    elif isinstance(value, list):
        raise InvalidRequest(
            "prompt must be a string or a list of one string (no batches, no token ids)",
            field="prompt",
        )
    if not isinstance(value, str) or not 1 <= len(value) <= MAX_PROMPT_CHARS:
        raise InvalidRequest(
            f"prompt is required: a string of 1-{MAX_PROMPT_CHARS} characters", field="prompt"
        )
    return check_utf8(value, "prompt")


def _message(message: object, where: str) -> ChatMessage:
    if not isinstance(message, dict):
        raise InvalidRequest(f"{where} must be an object", field=where)
    if message.get("tool_calls"):
        raise InvalidRequest("tool calling is not supported", field=f"{where}.tool_calls")
    extra = sorted(set(message) - {"role", "content", "tool_calls"} - MESSAGE_EXTRA)
    if extra or message.get("refusal") is not None:
        key = extra[0] if extra else "refusal"
        raise InvalidRequest(f"{where}.{key} is not supported", field=f"{where}.{key}")
    role = message.get("role")
    role = "system" if role == "developer" else role  # OpenAI's newer name for system
    if not isinstance(role, str) or role not in ROLES:
        raise InvalidRequest(
            f"{where}.role must be one of {sorted(ROLES | {'developer'})}", field=f"{where}.role"
        )
    return ChatMessage(role, _content(message.get("content"), f"{where}.content"))


def _content(value: object, where: str) -> str:
    """A string, or a list of text parts (joined); images, audio and files are refused."""
    if isinstance(value, list):
        texts = []
        for i, part in enumerate(value):
            if not isinstance(part, dict) or part.get("type") != "text":
                raise InvalidRequest(
                    f"{where}[{i}]: only text content parts are supported", field=f"{where}[{i}]"
                )
            if set(part) != {"type", "text"} or not isinstance(part["text"], str):
                raise InvalidRequest(
                    f"{where}[{i}] must be {{'type': 'text', 'text': str}}", field=f"{where}[{i}]"
                )
            texts.append(part["text"])
        value = "".join(texts)
    if not isinstance(value, str):
        raise InvalidRequest(f"{where} must be a string or a list of text parts", field=where)
    return check_utf8(value, where)
