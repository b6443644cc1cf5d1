"""Validation of the native POST /execute and /cancel bodies into the core's `GenerationRequest`.

Bad input stops here, with the field named.

Everything is checked before a job exists: types (a bool is not a number), ranges, lengths,
unknown fields (a misspelt "max_token" would otherwise silently mean the default). What needs
the model (does prompt + max_tokens fit the context?) is checked by the app after tokenizing,
and also answers 400 INVALID_REQUEST before any stream starts.
"""

from __future__ import annotations

import json
import math
import re
import secrets
from collections.abc import Callable

from runtime.chat import MAX_MESSAGES
from runtime.errors import InvalidRequest, clip
from runtime.request import ChatMessage, GenerationRequest
from runtime.sampling import SamplingParams

JOB_ID_RE = re.compile(r"[A-Za-z0-9._:-]{1,128}")
MAX_PROMPT_CHARS = 32_768
MAX_TOKENS_LIMIT = 2048
DEFAULT_MAX_TOKENS = 256
MAX_STOP_STRINGS = 4
MAX_STOP_CHARS = 100
ROLES = frozenset({"system", "user", "assistant", "tool"})
SEED_LIMIT = 2**64 - 1
# top_k travels to the GPU kernels as an int32; any value above the vocabulary size already
# means "off" (keep every token), so the cap costs nothing and keeps the kernels' arguments valid.
TOP_K_LIMIT = 2**31 - 1

EXECUTE_FIELDS = frozenset(
    {
        "job_id",
        "prompt",
        "messages",
        "max_tokens",
        "temperature",
        "top_k",
        "top_p",
        "min_p",
        "repetition_penalty",
        "stop",
        "seed",
    }
)


def parse_json_object(body: bytes) -> dict:
    """The body as a JSON object, or `InvalidRequest` (field "body") for anything else.

    Beyond malformed text, `json.loads` raises plain ValueError for an integer literal over
    Python's digit limit (4300) and RecursionError for deeply nested arrays/objects; both are
    the client's fault, never a 500. (JSONDecodeError and UnicodeDecodeError are ValueErrors.)
    """
    try:
        value = json.loads(body)
    except ValueError as error:
        raise InvalidRequest(f"body is not valid JSON: {error}", field="body") from None
    except RecursionError:
        raise InvalidRequest("body is nested too deeply", field="body") from None
    if not isinstance(value, dict):
        raise InvalidRequest("body must be a JSON object", field="body")
    return value


def int_field(body: dict, name: str, default: int | None, lo: int, hi: int | None) -> int | None:
    value = body.get(name, default)
    if value is None and default is None and name not in body:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidRequest(f"{name} must be an integer", field=name)
    if value < lo or (hi is not None and value > hi):
        bound = f"{lo}..{hi}" if hi is not None else f">= {lo}"
        raise InvalidRequest(f"{name} must be in {bound}, got {_show(value)}", field=name)
    return value


def _show(value: int | float) -> str:
    """A number for an error message: huge integers are summarised, not printed in full."""
    if isinstance(value, int) and value.bit_length() > 64:
        return f"an integer of {value.bit_length()} bits"
    return repr(value)


def float_field(
    body: dict, name: str, default: float, lo: float, hi: float, *, lo_open: bool
) -> float:
    value = body.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidRequest(f"{name} must be a finite number", field=name)
    # isfinite only on floats: math.isfinite(10**400) overflows; the range check below is
    # exact for an int of any size.
    if isinstance(value, float) and not math.isfinite(value):
        raise InvalidRequest(f"{name} must be a finite number", field=name)
    if (value <= lo if lo_open else value < lo) or value > hi:
        bound = f"{'(' if lo_open else '['}{lo}, {hi}]"
        raise InvalidRequest(f"{name} must be in {bound}, got {_show(value)}", field=name)
    return float(value)


def check_utf8(text: str, field: str) -> str:
    """JSON may carry lone surrogates ("\\ud800") that no UTF-8 tokenizer can encode: refuse them."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidRequest(
            f"{field} is not valid Unicode (a lone surrogate code point)", field=field
        ) from None
    return text


def validate_job_id(body: dict) -> str:
    job_id = body.get("job_id")
    if not isinstance(job_id, str) or not JOB_ID_RE.fullmatch(job_id):
        raise InvalidRequest(
            "job_id is required: 1-128 characters of A-Z a-z 0-9 . _ : -", field="job_id"
        )
    return job_id


def messages_of(
    value: object, one: Callable[[object, str], ChatMessage]
) -> tuple[ChatMessage, ...]:
    """A `messages` list, each item checked by the front end's `one(item, "messages[i]")`."""
    if not isinstance(value, list) or not 1 <= len(value) <= MAX_MESSAGES:
        raise InvalidRequest(
            f"messages must be a list of 1-{MAX_MESSAGES} messages", field="messages"
        )
    return checked_total([one(item, f"messages[{i}]") for i, item in enumerate(value)])


def _message(message: object, where: str) -> ChatMessage:
    if not isinstance(message, dict) or set(message) - {"role", "content"}:
        raise InvalidRequest(f"{where} must be an object with role and content", field=where)
    role, content = message.get("role"), message.get("content")
    if not isinstance(role, str) or role not in ROLES:  # a dict or list is unhashable
        raise InvalidRequest(f"{where}.role must be one of {sorted(ROLES)}", field=f"{where}.role")
    if not isinstance(content, str):
        raise InvalidRequest(f"{where}.content must be a string", field=f"{where}.content")
    check_utf8(content, f"{where}.content")
    return ChatMessage(role, content)


def checked_total(messages: list[ChatMessage]) -> tuple[ChatMessage, ...]:
    """The messages, if their content adds up to 1..MAX_PROMPT_CHARS characters (every front end)."""
    total = sum(len(m.content) for m in messages)
    if total == 0 or total > MAX_PROMPT_CHARS:
        raise InvalidRequest(
            f"messages must hold 1-{MAX_PROMPT_CHARS} characters of content in all",
            field="messages",
        )
    return tuple(messages)


def validate_execute(body: dict) -> GenerationRequest:
    """Check an /execute body; raises `InvalidRequest` naming the first field at fault."""
    refuse_unknown_fields(body, EXECUTE_FIELDS)
    job_id = validate_job_id(body)

    prompt, messages = body.get("prompt"), None
    if ("prompt" in body) == ("messages" in body):
        raise InvalidRequest("give exactly one of prompt or messages", field="prompt")
    if "prompt" in body:
        if not isinstance(prompt, str) or not 1 <= len(prompt) <= MAX_PROMPT_CHARS:
            raise InvalidRequest(
                f"prompt must be a string of 1-{MAX_PROMPT_CHARS} characters", field="prompt"
            )
        check_utf8(prompt, "prompt")
    else:
        messages = messages_of(body["messages"], _message)

    max_tokens = int_field(body, "max_tokens", DEFAULT_MAX_TOKENS, 1, MAX_TOKENS_LIMIT)
    params, stop = validate_sampling(body)
    return GenerationRequest(job_id, prompt, messages, max_tokens, params, stop)


def validate_sampling(body: dict) -> tuple[SamplingParams, tuple[str, ...]]:
    """The sampling fields and stop strings every front end shares (native, OpenAI's /v1)."""
    temperature = float_field(body, "temperature", 1.0, 0.0, 2.0, lo_open=False)
    top_k = int_field(body, "top_k", 0, 0, TOP_K_LIMIT)  # 0, or >= the vocabulary size: off
    top_p = float_field(body, "top_p", 1.0, 0.0, 1.0, lo_open=True)
    min_p = float_field(body, "min_p", 0.0, 0.0, 1.0, lo_open=False)
    repetition_penalty = float_field(body, "repetition_penalty", 1.0, 0.0, 2.0, lo_open=True)
    stop = validate_stop(body.get("stop", []))
    seed = int_field(body, "seed", None, 0, SEED_LIMIT)
    if seed is None:
        seed = secrets.randbits(64)  # echoed in `started`, so the run can be replayed

    params = SamplingParams(
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        min_p=min_p,
        repetition_penalty=repetition_penalty,
        seed=seed,
    )
    return params, stop


def validate_stop(stop: object) -> tuple[str, ...]:
    if isinstance(stop, str):  # a single string is a common shorthand
        stop = [stop]
    if not isinstance(stop, list) or len(stop) > MAX_STOP_STRINGS:
        raise InvalidRequest(
            f"stop must be a list of at most {MAX_STOP_STRINGS} strings", field="stop"
        )
    for text in stop:
        if not isinstance(text, str) or not 1 <= len(text) <= MAX_STOP_CHARS:
            raise InvalidRequest(
                f"each stop string must have 1-{MAX_STOP_CHARS} characters", field="stop"
            )
        check_utf8(text, "stop")
    return tuple(stop)


def validate_cancel(body: dict) -> str:
    refuse_unknown_fields(body, frozenset({"job_id"}))
    return validate_job_id(body)


def refuse_unknown_fields(body: dict, known: frozenset[str]) -> None:
    """400 naming the first unknown field, clipped: the name is client text (REL-6)."""
    unknown = sorted(set(body) - known)
    if unknown:
        name = clip(unknown[0])
        raise InvalidRequest(f"unknown field {name!r}", field=name)


def loggable_job_id(value: object) -> str:
    """The job id as a log line may show it: as given when valid, else clipped or its type."""
    if isinstance(value, str):
        return value if JOB_ID_RE.fullmatch(value) else clip(value)
    return f"<{type(value).__name__}>"
