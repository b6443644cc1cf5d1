"""One sequence's own state, pure: prompt, history, decoder, stop matcher, sampling, timing.

Everything a job needs besides the engine's memory lives here, so a sequence can run alone or
beside 63 others and none of its state is shared: the batcher (`runtime.batcher`) only gives
it a slot. Its prompt is cut into chunks at fixed offsets of its own (0, C, 2C, ...), never at
boundaries that depend on who else is running, because a chunk's arithmetic depends on its
length (batch invariance, specs/decisions/0026-batch-slots-step-loop.md).

Event contract (what `accept` returns; `runtime.generate` documents it for a whole job): one
`TokenOut` per sampled token, in order, `index` 0, 1, 2, ..., then exactly one `Finished`.
"""

from __future__ import annotations

import time
from collections.abc import Collection
from collections.abc import Sequence as Seq
from typing import Literal, Protocol

import attrs

from runtime.errors import InvalidRequest
from runtime.sampling import SamplingParams
from runtime.stops import StopMatcher

#: repetition_penalty looks at this many most recent tokens (prompt and output), as llama.cpp.
REPETITION_WINDOW = 64

StopReason = Literal["max_tokens", "eos", "stop_sequence"]


class IncrementalDecoder(Protocol):
    def push(self, token_id: int) -> str: ...
    def flush(self) -> str: ...


@attrs.frozen
class TokenOut:
    text: str  # text released by this token (may be empty; see runtime.generate)
    token_id: int
    index: int  # 0-based position in the output


@attrs.frozen
class Finished:
    stop_reason: StopReason
    tokens_out: int  # number of TokenOut events sent
    decode_time_ms: float  # first sample to last token, excluding prefill
    prefill_time_ms: float = 0.0


Event = TokenOut | Finished


class Sequence:
    """A job's generation state; `tag` is the caller's (the executor keeps its job handle there)."""

    def __init__(
        self,
        prompt_ids: Seq[int],
        params: SamplingParams,
        *,
        max_tokens: int,
        decoder: IncrementalDecoder,
        eog_ids: Collection[int],
        max_context: int,
        stops: Seq[str] = (),
        tag: object = None,
    ):
        if not prompt_ids:
            raise InvalidRequest("the prompt encodes to no tokens", field="prompt")
        if max_tokens < 1:
            raise InvalidRequest("max_tokens must be at least 1", field="max_tokens")
        # The caller validates this against the request; checked again because a KV-cache
        # overrun would corrupt memory on the GPU backend rather than fail.
        if len(prompt_ids) + max_tokens > max_context:
            raise InvalidRequest(
                f"prompt ({len(prompt_ids)} tokens) + max_tokens ({max_tokens}) exceeds the "
                f"context ({max_context} tokens)",
                field="max_tokens",
            )
        self.prompt_ids = tuple(prompt_ids)
        self.params = params
        self.max_tokens = max_tokens
        self.tag = tag
        self._decoder = decoder
        self._matcher = StopMatcher(stops)
        self._eog = frozenset(eog_ids)
        #: the last REPETITION_WINDOW tokens (prompt and output) for repetition_penalty
        self.history = list(self.prompt_ids[-REPETITION_WINDOW:])
        self.fed = 0  # prompt tokens prefilled so far
        self.cached = 0  # tokens in its KV cache (prompt fed + sampled tokens decoded)
        self.index = 0  # tokens sampled so far = the index of the next draw
        self.next_token: int | None = None  # sampled, not yet appended to the cache
        self.done = False
        self._t_start = time.perf_counter()
        self._t_prefilled: float | None = None

    @property
    def prefilling(self) -> bool:
        return self.fed < len(self.prompt_ids)

    def next_chunk(self, size: int) -> tuple[int, ...]:
        """The next prompt chunk: [fed, fed + size) cut at multiples of `size` of this prompt."""
        return self.prompt_ids[self.fed : self.fed + size]

    def chunk_done(self, n: int) -> None:
        self.fed += n
        self.cached += n
        if not self.prefilling:
            self._t_prefilled = time.perf_counter()

    def accept(self, token: int) -> list[Event]:
        """The sampler picked `token`: its TokenOut, and Finished when the sequence is over."""
        assert not self.done and not self.prefilling
        index, decoder, matcher = self.index, self._decoder, self._matcher
        last = index + 1 == self.max_tokens
        reason: StopReason = "max_tokens"
        if token in self._eog:
            reason, text = "eos", _release_all(decoder, matcher)
        else:
            piece = matcher.push(decoder.push(token))
            text = piece.text
            if piece.stopped:
                reason = "stop_sequence"
            elif last:
                text += _release_all(decoder, matcher)
                if matcher.stopped:  # the decoder's last bytes completed a stop string
                    reason = "stop_sequence"
        self.index += 1
        events: list[Event] = [TokenOut(text=text, token_id=token, index=index)]
        if token in self._eog or matcher.stopped or last:
            self.done = True
            self.next_token = None
            events.append(self._finished(reason))
        else:
            self.history.append(token)
            del self.history[:-REPETITION_WINDOW]
            self.next_token = token
        return events

    def _finished(self, reason: StopReason) -> Finished:
        now = time.perf_counter()
        prefilled = self._t_prefilled if self._t_prefilled is not None else now
        return Finished(
            stop_reason=reason,
            tokens_out=self.index,
            decode_time_ms=(now - prefilled) * 1e3,
            prefill_time_ms=(prefilled - self._t_start) * 1e3,
        )


def _release_all(decoder: IncrementalDecoder, matcher: StopMatcher) -> str:
    """End of output: flush the decoder through the matcher, then whatever the matcher holds."""
    piece = matcher.push(decoder.flush())
    return piece.text if piece.stopped else piece.text + matcher.flush()
