"""The backend-independent generation loop: prefill in chunks, then sample and step.

Runs synchronously on the thread that owns the engine (the executor's thread) as a generator of
events, so the caller forwards each token the moment it is sampled (streaming is live) and can
stop iterating at any time. Cancellation is polled through `should_cancel()` between every
prefill chunk and every decode step; a cancelled job raises `runtime.errors.Cancelled`.

Event contract: one `TokenOut` per sampled token, in order, `index` 0, 1, 2, ..., then exactly
one `Finished` (unless an exception ends the generator). `TokenOut.text` is what may be shown
now, possibly "": text is held back while it could still become a stop string or while a UTF-8
character is incomplete. All held text is released in the last `TokenOut`, so concatenating the
texts gives the whole output. The end-of-generation token counts as a token (its `TokenOut`
carries only released held-back text, never its own text such as "<|im_end|>"); so does the
token that completes a stop string (its text stops just before the match).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Iterator, Sequence
from typing import Literal, Protocol

import attrs

from runtime.engine_api import Engine
from runtime.errors import Cancelled, InvalidRequest
from runtime.sampling import SamplingParams
from runtime.stops import StopMatcher

#: Prompts are fed to the engine in chunks of this many tokens, with a cancel check between.
PREFILL_CHUNK = 256
#: repetition_penalty looks at this many most recent tokens (prompt and output), as llama.cpp.
REPETITION_WINDOW = 64

StopReason = Literal["max_tokens", "eos", "stop_sequence"]


class IncrementalDecoder(Protocol):
    def push(self, token_id: int) -> str: ...
    def flush(self) -> str: ...


@attrs.frozen
class TokenOut:
    text: str  # text released by this token (may be empty; see the module docstring)
    token_id: int
    index: int  # 0-based position in the output


@attrs.frozen
class Finished:
    stop_reason: StopReason
    tokens_out: int  # number of TokenOut events sent
    decode_time_ms: float  # first sample to last token, excluding prefill
    prefill_time_ms: float = 0.0


Event = TokenOut | Finished


def generate(
    engine: Engine,
    prompt_ids: Sequence[int],
    params: SamplingParams,
    *,
    max_tokens: int,
    decoder: IncrementalDecoder,
    eog_ids: Collection[int],
    stops: Sequence[str] = (),
    should_cancel: Callable[[], bool] = lambda: False,
    prefill_chunk: int = PREFILL_CHUNK,
) -> Iterator[Event]:
    """Run one job on `engine` (reset first); yields `TokenOut`s then one `Finished`."""
    if not prompt_ids:
        raise InvalidRequest("the prompt encodes to no tokens", field="prompt")
    if max_tokens < 1:
        raise InvalidRequest("max_tokens must be at least 1", field="max_tokens")
    # The caller validates this against the request; checked again because a KV-cache overrun
    # would corrupt memory on the GPU backend rather than fail.
    if len(prompt_ids) + max_tokens > engine.max_context:
        raise InvalidRequest(
            f"prompt ({len(prompt_ids)} tokens) + max_tokens ({max_tokens}) exceeds the "
            f"context ({engine.max_context} tokens)",
            field="max_tokens",
        )

    def check_cancel() -> None:
        if should_cancel():
            raise Cancelled("the job was cancelled")

    t0 = time.perf_counter()
    engine.reset()
    for start in range(0, len(prompt_ids), prefill_chunk):
        check_cancel()
        engine.prefill(prompt_ids[start : start + prefill_chunk])
    t1 = time.perf_counter()

    matcher = StopMatcher(stops)
    history = list(prompt_ids[-REPETITION_WINDOW:])
    eog = frozenset(eog_ids)
    reason: StopReason = "max_tokens"
    index = 0
    while True:
        check_cancel()
        token = engine.sample(params, history, index)
        last = index + 1 == max_tokens
        if token in eog:
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
        yield TokenOut(text=text, token_id=token, index=index)
        index += 1
        if token in eog or matcher.stopped or last:
            break
        history.append(token)
        del history[:-REPETITION_WINDOW]
        engine.step(token)
    t2 = time.perf_counter()
    yield Finished(
        stop_reason=reason,
        tokens_out=index,
        decode_time_ms=(t2 - t1) * 1e3,
        prefill_time_ms=(t1 - t0) * 1e3,
    )


def _release_all(decoder: IncrementalDecoder, matcher: StopMatcher) -> str:
    """End of output: flush the decoder through the matcher, then whatever the matcher holds."""
    piece = matcher.push(decoder.flush())
    return piece.text if piece.stopped else piece.text + matcher.flush()
