"""One job from start to end: a batch of one on the step loop of `runtime.batcher`.

Runs synchronously on the thread that owns the engine as a generator of events, so the caller
forwards each token the moment it is sampled (streaming is live) and can stop iterating at any
time. Cancellation is polled through `should_cancel()` before every step, i.e. between every
prefill chunk and every decode step; a cancelled job raises `runtime.errors.Cancelled`. The
worker runs many jobs at once on the same `Batcher` (actors.executor); this is for tests and
tools that want one sequence, on the very same path.

Event contract: one `TokenOut` per sampled token, in order, `index` 0, 1, 2, ..., then exactly
one `Finished` (unless an exception ends the generator). `TokenOut.text` is what may be shown
now, possibly "": text is held back while it could still become a stop string or while a UTF-8
character is incomplete. All held text is released in the last `TokenOut`, so concatenating the
texts gives the whole output. The end-of-generation token counts as a token (its `TokenOut`
carries only released held-back text, never its own text such as "<|im_end|>"); so does the
token that completes a stop string (its text stops just before the match).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterator
from collections.abc import Sequence as Seq

from runtime.batcher import Batcher
from runtime.engine_api import Engine
from runtime.errors import Cancelled, WorkerError
from runtime.sampling import SamplingParams
from runtime.sequence import (
    REPETITION_WINDOW,
    Event,
    Finished,
    IncrementalDecoder,
    Sequence,
    StopReason,
    TokenOut,
)

__all__ = [
    "REPETITION_WINDOW",
    "Event",
    "Finished",
    "IncrementalDecoder",
    "StopReason",
    "TokenOut",
    "generate",
]


def generate(
    engine: Engine,
    prompt_ids: Seq[int],
    params: SamplingParams,
    *,
    max_tokens: int,
    decoder: IncrementalDecoder,
    eog_ids: Collection[int],
    stops: Seq[str] = (),
    should_cancel: Callable[[], bool] = lambda: False,
    prefill_chunk: int | None = None,
) -> Iterator[Event]:
    """Run one job on `engine` (in slot 0); yields `TokenOut`s then one `Finished`."""
    seq = Sequence(
        prompt_ids,
        params,
        max_tokens=max_tokens,
        decoder=decoder,
        eog_ids=eog_ids,
        max_context=engine.max_context,
        stops=stops,
    )
    batcher = Batcher(engine, max_batch=1, chunk=prefill_chunk)
    batcher.admit(seq)
    try:
        while not seq.done:
            if should_cancel():
                raise Cancelled("the job was cancelled")
            for _, outcome in batcher.step():
                if isinstance(outcome, WorkerError):
                    raise outcome
                yield outcome
    finally:
        batcher.retire(seq)
