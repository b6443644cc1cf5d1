"""Chat templates: render a conversation with the Jinja2 template stored in the GGUF file.

Templates come from model files, which anyone can publish, and Jinja templates have been used
for code execution elsewhere (`''.__class__.__mro__[1].__subclasses__()` & co.). So rendering
happens only in our strict sandbox (runtime.chat_sandbox: Jinja2's `ImmutableSandboxedEnvironment`
with every loop, call and value bounded). A template that breaks the sandbox rules fails with
`ChatTemplateError` and runs nothing; one that runs past its budget (steps or time) or writes
more than `MAX_OUTPUT_CHARS` is stopped where it is, by an exception raised inside its own code,
and the request gets a 400 (REL-8).

The environment follows Hugging Face's `apply_chat_template`, the environment templates are
written for: `trim_blocks` and `lstrip_blocks`, the loop-controls extension, `raise_exception`
and `strftime_now` as globals, a `tojson` filter that keeps non-ASCII text as is.
"""

from __future__ import annotations

import datetime
import functools
import json
from collections.abc import Sequence
from typing import Any

import jinja2
import jinja2.ext
from jinja2.sandbox import SecurityError

from runtime.chat_sandbox import RenderLimitExceeded, Sandbox, end_budget, render_budget
from runtime.errors import InvalidRequest, ModelLoadError

#: The rendered prompt: 4 x the 32,768 characters of content a request may carry (templates add
#: tens of characters per message); past it the text could never fit a context anyway, and
#: tokenizing it would take seconds.
MAX_OUTPUT_CHARS = 1 << 17
#: Messages in one conversation (the API refuses more, naming `messages`).
MAX_MESSAGES = 256


class ChatTemplateError(InvalidRequest):
    """The chat template refused these messages (its own `raise_exception`), broke the sandbox
    rules, ran past its budget, or failed while rendering. An `InvalidRequest`: the request
    cannot be served as sent, and nothing of the template ran beyond the failing point."""


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


@functools.cache
def _environment() -> Sandbox:
    env = Sandbox(
        trim_blocks=True,
        lstrip_blocks=True,
        extensions=[jinja2.ext.loopcontrols],
        undefined=jinja2.Undefined,
        autoescape=False,
    )
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    env.add_filter("tojson", _tojson)
    return env


@functools.lru_cache(maxsize=8)
def compile_chat_template(template: str) -> jinja2.Template:
    """Parse a template once (cached); a syntax error is the model file's fault: ModelLoadError.

    The loader may call this at load time so that a broken template fails the load early."""
    if not isinstance(template, str) or not template.strip():
        raise ModelLoadError("tokenizer.chat_template is missing or empty")
    env = _environment()
    try:
        return env.from_string(env.parse_bounded(template))
    except jinja2.TemplateSyntaxError as exc:
        raise ModelLoadError(
            f"tokenizer.chat_template is not a valid Jinja template (line {exc.lineno}: {exc.message})"
        ) from None
    except SecurityError as exc:  # a constant part already breaks a value limit
        raise ModelLoadError(f"tokenizer.chat_template cannot be used: {exc}") from None


def validate_messages(messages: Any) -> list[dict[str, Any]]:
    """`messages` must be a non-empty list of {"role": str, "content": str}, where an assistant
    message may carry `tool_calls` (a list of objects; its content may then be null); copies."""
    if not isinstance(messages, Sequence) or isinstance(messages, (str, bytes)) or not messages:
        raise InvalidRequest("messages must be a non-empty list", field="messages")
    if len(messages) > MAX_MESSAGES:
        raise InvalidRequest(f"messages must hold at most {MAX_MESSAGES}", field="messages")
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
    `ChatTemplateError` when the template refuses them, breaks the sandbox rules or its budget,
    and `ModelLoadError` when the template itself does not parse.
    """
    clean = validate_messages(messages)
    if tools is not None and not _objects(tools):
        raise InvalidRequest("tools must be a list of objects", field="tools")
    extra = {} if tools is None else {"tools": tools}
    compiled = compile_chat_template(template)
    token = render_budget()
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
                    f"the chat template produced over {MAX_OUTPUT_CHARS} characters",
                    field="messages",
                )
            parts.append(chunk)
    except _TemplateRaised as exc:
        raise ChatTemplateError(
            f"the model's chat template rejected the messages: {exc}", field="messages"
        ) from None
    except RenderLimitExceeded as exc:
        raise ChatTemplateError(
            f"the model's chat template {exc} on these messages and was stopped; "
            "send fewer messages, or a prompt",
            field="messages",
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
    finally:
        end_budget(token)
    return "".join(parts)
