"""Request -> prompt token ids, with the model's tokenizer and chat template.

Runs on a worker thread (tokenizing 32 K characters takes a while in pure Python and must not
stall the event loop), before any stream starts, so everything that can be wrong about the
prompt (no chat template, a template error, too many tokens for the context) is a 400.

A chat template that does not even parse is the model file's fault, but the client's way out is
the same as for a model without a template: send `prompt`. So it is a 400 on `messages` too,
saying so; the supervisor compiles the template once at load (`chat_template_problem`) and
narrates a warning, so an operator learns of it before any client does.

The rendered text is encoded with `parse_special=True`, as llama.cpp does for chat prompts:
the template's own markers ("<|im_start|>") must become control tokens. The same holds for
control-token text inside message content; see specs/decisions/0006-sse-protocol.md.
"""

from __future__ import annotations

from runtime.errors import InvalidRequest, ModelLoadError
from runtime.request import GenerationRequest


def chat_template_problem(template: str | None) -> str | None:
    """Why `template` cannot be used (it does not parse), or None. Compiles it once (cached)."""
    if not template:
        return None  # no template at all: requests with messages are refused per request
    from runtime.chat import compile_chat_template

    try:
        compile_chat_template(template)
    except ModelLoadError as error:
        return error.message
    return None


def prompt_token_ids(
    info, request: GenerationRequest, context_length: int
) -> tuple[tuple[int, ...], str]:
    """(token ids, the prompt text as the model sees it) for `request`; checks it fits
    (with max_tokens None: that at least one new token fits).

    `info` is an actors.loader.ModelInfo (tokenizer, chat template, bos/eos texts). The text is
    for the fingerprint in the logs (and, with --log-prompts only, the log itself).
    """
    if request.messages is not None:
        if not info.chat_template:
            raise InvalidRequest(
                "this model has no chat template (a base model such as Gemma 3 270M): "
                "'messages' cannot be rendered; send the text as 'prompt' instead",
                field="messages",
            )
        from runtime.chat import render_chat

        try:
            text = render_chat(
                info.chat_template,
                [m.as_dict() for m in request.messages],
                bos_token=info.bos_token,
                eos_token=info.eos_token,
                add_generation_prompt=True,
            )
        except ModelLoadError as error:  # the template does not parse
            raise InvalidRequest(
                f"this model's chat template cannot be used ({error.message}); send a prompt",
                field="messages",
            ) from None
        field = "messages"
    else:
        text = request.prompt
        field = "prompt"
    ids = tuple(info.tokenizer.encode(text, parse_special=True))
    if not ids:
        raise InvalidRequest("the prompt encodes to no tokens", field=field)
    if request.max_tokens is None and len(ids) >= context_length:
        raise InvalidRequest(
            f"the prompt ({len(ids)} tokens) leaves no room for output in the context "
            f"({context_length} tokens)",
            field=field,
        )
    if request.max_tokens is not None and len(ids) + request.max_tokens > context_length:
        raise InvalidRequest(
            f"the prompt ({len(ids)} tokens) plus max_tokens ({request.max_tokens}) exceeds "
            f"the context ({context_length} tokens)",
            field="max_tokens" if len(ids) < context_length else field,
        )
    return ids, text
