"""Request -> prompt token ids, with the model's tokenizer and chat template.

Runs on a worker thread (tokenizing 32 K characters takes a while in pure Python and must not
stall the event loop), before any stream starts, so everything that can be wrong about the
prompt (no chat template, a template error, too many tokens for the context) is a 400.
"""

from __future__ import annotations

from api.validation import ExecuteRequest
from runtime.errors import InvalidRequest
from runtime.narration import fingerprint


def prompt_token_ids(
    info, request: ExecuteRequest, context_length: int
) -> tuple[tuple[int, ...], dict]:
    """(token ids, fingerprint of the prompt text) for `request`; checks prompt + max_tokens fit.

    `info` is an actors.loader.ModelInfo. The fingerprint (never the text) is what gets logged.
    """
    if request.messages is not None:
        if not info.chat_template:
            raise InvalidRequest("this model has no chat template; send a prompt", field="messages")
        from runtime.chat import render_chat

        text = render_chat(
            info.chat_template,
            list(request.messages),
            bos_token=info.bos_token,
            eos_token=info.eos_token,
            add_generation_prompt=True,
        )
        field = "messages"
    else:
        text = request.prompt
        field = "prompt"
    ids = tuple(info.tokenizer.encode(text, parse_special=True))
    if not ids:
        raise InvalidRequest("the prompt encodes to no tokens", field=field)
    if len(ids) + request.max_tokens > context_length:
        raise InvalidRequest(
            f"the prompt ({len(ids)} tokens) plus max_tokens ({request.max_tokens}) exceeds "
            f"the context ({context_length} tokens)",
            field="max_tokens" if len(ids) < context_length else field,
        )
    return ids, fingerprint(text)
