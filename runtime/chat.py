"""Chat templates: render a conversation with the Jinja2 template stored in the GGUF file.

Templates come from model files, which anyone can publish, and Jinja templates have been used
for code execution elsewhere (`''.__class__.__mro__[1].__subclasses__()` & co.). So rendering
happens only in Jinja2's `ImmutableSandboxedEnvironment`: no attribute starting with "_", no
unsafe callables, no mutation of the values passed in, `range` capped. A template that tries
any of that fails with `ChatTemplateError` and runs nothing. On top of the sandbox we cap the
size of `*` and `**` results and of the output, so a template cannot eat the worker's memory.

The environment follows Hugging Face's `apply_chat_template`, the environment templates are
written for: `trim_blocks` and `lstrip_blocks`, the loop-controls extension, `raise_exception`
and `strftime_now` as globals, a `tojson` filter that keeps non-ASCII text as is.
"""

from __future__ import annotations

import datetime
import functools
import json
import operator
from collections.abc import Sequence
from typing import Any

import jinja2
import jinja2.ext
from jinja2.sandbox import ImmutableSandboxedEnvironment, SecurityError

from runtime.errors import InvalidRequest, ModelLoadError

MAX_OUTPUT_CHARS = 4 << 20  # far above any real prompt; the limit only stops runaway templates
_MAX_REPEAT = 1 << 20  # longest string/list a template may build with `*`
_MAX_POWER_BITS = 4096  # largest integer a template may build with `**`


class ChatTemplateError(InvalidRequest):
    """The chat template refused these messages (its own `raise_exception`), broke the sandbox
    rules, or failed while rendering. An `InvalidRequest`: the request cannot be served as sent,
    and nothing of the template ran beyond the failing point."""


class _TemplateRaised(Exception):
    """What `raise_exception(...)` inside a template raises."""


def _raise_exception(message: str) -> None:
    raise _TemplateRaised(str(message))


def _strftime_now(fmt: str) -> str:
    return datetime.datetime.now().strftime(fmt)


def _tojson(value: Any, indent: int | None = None, separators=None, sort_keys: bool = False) -> str:
    return json.dumps(
        value, ensure_ascii=False, indent=indent, separators=separators, sort_keys=sort_keys
    )


class _Sandbox(ImmutableSandboxedEnvironment):
    """The immutable sandbox, made strict: reaching for an unsafe attribute raises at once
    (Jinja's default yields an undefined value that prints as "" and lets the template go on),
    and `*` / `**` may not build huge values."""

    intercepted_binops = frozenset({"*", "**"})

    def unsafe_undefined(self, obj: Any, attribute: Any) -> jinja2.Undefined:
        raise SecurityError(
            f"access to attribute {attribute!r} of a {type(obj).__name__!r} object is unsafe"
        )

    def call_binop(self, context, operator_name: str, left: Any, right: Any) -> Any:
        if operator_name == "**":
            ints = isinstance(left, int) and isinstance(right, int)
            if ints and right > 0 and right * abs(left).bit_length() > _MAX_POWER_BITS:
                raise SecurityError("the template computes an oversized power")
            return operator.pow(left, right)
        for seq, count in ((left, right), (right, left)):
            sized = isinstance(seq, (str, list, tuple)) and isinstance(count, int)
            if sized and len(seq) * count > _MAX_REPEAT:
                raise SecurityError("the template builds an oversized string or list")
        return operator.mul(left, right)


@functools.cache
def _environment() -> _Sandbox:
    env = _Sandbox(
        trim_blocks=True,
        lstrip_blocks=True,
        extensions=[jinja2.ext.loopcontrols],
        undefined=jinja2.Undefined,
        autoescape=False,
    )
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    env.filters["tojson"] = _tojson
    return env


@functools.lru_cache(maxsize=8)
def compile_chat_template(template: str) -> jinja2.Template:
    """Parse a template once (cached); a syntax error is the model file's fault: ModelLoadError.

    The loader may call this at load time so that a broken template fails the load early."""
    if not isinstance(template, str) or not template.strip():
        raise ModelLoadError("tokenizer.chat_template is missing or empty")
    try:
        return _environment().from_string(template)
    except jinja2.TemplateSyntaxError as exc:
        raise ModelLoadError(
            f"tokenizer.chat_template is not a valid Jinja template (line {exc.lineno}: {exc.message})"
        ) from None


def validate_messages(messages: Any) -> list[dict[str, Any]]:
    """`messages` must be a non-empty list of {"role": str, "content": str}, where an assistant
    message may carry `tool_calls` (a list of objects; its content may then be null); copies."""
    if not isinstance(messages, Sequence) or isinstance(messages, (str, bytes)) or not messages:
        raise InvalidRequest("messages must be a non-empty list", field="messages")
    clean = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise InvalidRequest(f"messages[{i}] must be an object", field="messages")
        extra = set(message) - {"role", "content", "tool_calls"}
        if extra:
            raise InvalidRequest(
                f"messages[{i}] has unknown keys {sorted(map(str, extra))} "
                "(only 'role', 'content' and 'tool_calls' are accepted)",
                field="messages",
            )
        role, content = message.get("role"), message.get("content")
        if not isinstance(role, str) or not role:
            raise InvalidRequest(f"messages[{i}].role must be a non-empty string", field="messages")
        clean_message: dict[str, Any] = {"role": role, "content": content}
        if "tool_calls" in message:
            calls = message["tool_calls"]
            if not _objects(calls):
                raise InvalidRequest(
                    f"messages[{i}].tool_calls must be a list of objects", field="messages"
                )
            clean_message["tool_calls"] = calls
        if not isinstance(content, str) and not (content is None and "tool_calls" in message):
            raise InvalidRequest(f"messages[{i}].content must be a string", field="messages")
        clean.append(clean_message)
    return clean


def _objects(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(v, dict) for v in value)


def render_chat(
    template: str,
    messages: list[dict],
    *,
    bos_token: str,
    eos_token: str,
    add_generation_prompt: bool = True,
    tools: list[dict] | None = None,
) -> str:
    """The prompt text for `messages` as the model's template lays it out.

    `tools` (a list of function descriptions, as OpenAI's API sends them) goes to the template
    as the variable `tools`, which templates such as Qwen2.5's render into the system turn.

    The result still contains special-token texts ("<|im_start|>" ...): encode it with
    `parse_special=True`. Raises `InvalidRequest` (field "messages") for malformed messages,
    `ChatTemplateError` when the template refuses them or breaks the sandbox rules, and
    `ModelLoadError` when the template itself does not parse.
    """
    clean = validate_messages(messages)
    if tools is not None and not _objects(tools):
        raise InvalidRequest("tools must be a list of objects", field="tools")
    extra = {} if tools is None else {"tools": tools}
    compiled = compile_chat_template(template)
    try:
        # Streamed so that a runaway template is stopped at the size cap, not after it.
        parts, size = [], 0
        for chunk in compiled.generate(
            messages=clean,
            bos_token=bos_token,
            eos_token=eos_token,
            add_generation_prompt=add_generation_prompt,
            **extra,
        ):
            size += len(chunk)
            if size > MAX_OUTPUT_CHARS:
                raise ChatTemplateError(
                    f"the chat template produced over {MAX_OUTPUT_CHARS} characters"
                )
            parts.append(chunk)
    except _TemplateRaised as exc:
        raise ChatTemplateError(
            f"the model's chat template rejected the messages: {exc}", field="messages"
        ) from None
    except SecurityError as exc:
        raise ChatTemplateError(
            f"the model's chat template tried an operation the sandbox forbids ({exc}); "
            "it was stopped before running it"
        ) from None
    except RecursionError:
        # e.g. a macro that calls itself: Python's stack limit stops it, the worker goes on.
        raise ChatTemplateError(
            "the model's chat template recursed too deeply on these messages", field="messages"
        ) from None
    except (jinja2.TemplateError, TypeError, ValueError, LookupError, ArithmeticError) as exc:
        raise ChatTemplateError(
            f"the model's chat template failed on these messages: {type(exc).__name__}: {exc}",
            field="messages",
        ) from None
    return "".join(parts)
