"""The core's generation request: what every front end hands the service, whatever its protocol.

A front end (the native `/execute` JSON, later OpenAI's `/v1/*`) validates its own wire format
and produces a `GenerationRequest`; from there on nothing depends on how the request arrived.
Exactly one of `prompt` (raw text, encoded as is) and `messages` (rendered with the model's chat
template) is set. The seed is always concrete: a front end draws one when the client gave none,
so every run can be replayed from what `started` echoes.
"""

from __future__ import annotations

import attrs

from runtime.sampling import SamplingParams


@attrs.frozen
class ChatMessage:
    role: str  # system | user | assistant | tool
    content: str

    def as_dict(self) -> dict[str, str]:
        return {"role": self.role, "content": self.content}


def _one_of_prompt_or_messages(request: GenerationRequest, _attribute, _value) -> None:
    if (request.prompt is None) == (request.messages is None):
        raise ValueError("a GenerationRequest has exactly one of prompt or messages")


@attrs.frozen
class GenerationRequest:
    job_id: str
    prompt: str | None = attrs.field(default=None, validator=_one_of_prompt_or_messages)
    messages: tuple[ChatMessage, ...] | None = None
    # None: as many as the context leaves after the prompt (OpenAI's default when a client
    # sends none); the service fixes the number once the prompt is tokenized (`fitted`).
    max_tokens: int | None = 256
    params: SamplingParams = attrs.field(factory=SamplingParams)  # carries the seed
    stop: tuple[str, ...] = ()

    def fitted(self, prompt_tokens: int, context_length: int) -> GenerationRequest:
        """This request with a concrete max_tokens: "the rest of the context" made a number."""
        if self.max_tokens is not None:
            return self
        return attrs.evolve(self, max_tokens=max(1, context_length - prompt_tokens))

    def user_texts(self) -> tuple[str, ...]:
        """Every piece of text the client sent: what the logs must never carry (W-1902)."""
        texts = [self.prompt] if self.prompt is not None else []
        texts += [m.content for m in self.messages or ()]
        return (*texts, *self.stop)
