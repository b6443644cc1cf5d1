"""The one-sequence calls (reset / prefill(tokens) / step / logits() / sample(params, history,
draw)) over the slot interface, on one slot: the CUDA tests written for one sequence drive the
slot engine through this, and the batch tests check the slots against it.

`one_slot(engine)` wraps an engine of the slot interface (it has `max_batch`: the CUDA engine,
the numpy reference) and returns a wrapped one, or one still on the one-sequence calls, as it
is.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from runtime.engine_api import NON_FINITE
from runtime.errors import NonFiniteLogits
from runtime.sampling import SamplingParams


class OneSlot:
    def __init__(self, engine: Any, slot: int = 0):
        self.engine, self.slot = engine, slot

    def __getattr__(self, name: str) -> Any:  # fwd, ledger, sampler, close, ...
        return getattr(self.engine, name)

    @property
    def position(self) -> int:
        return self.engine.position(self.slot)

    def reset(self) -> None:
        self.engine.release(self.slot)

    def prefill(self, tokens: Sequence[int]) -> None:
        tokens, chunk = list(tokens), self.engine.prefill_chunk
        if not tokens:  # the engine's own error for an empty prefill
            self.engine.prefill(self.slot, tokens)
        for start in range(0, len(tokens), chunk):
            self.engine.prefill(self.slot, tokens[start : start + chunk])

    def step(self, token: int) -> None:
        self.engine.decode([self.slot], [token])

    def logits(self):
        return self.engine.logits(self.slot)

    def sample(self, params: SamplingParams, history: Sequence[int], draw: int) -> int:
        token = self.engine.sample([self.slot], [params], [history], [draw])[0]
        if token == NON_FINITE:
            raise NonFiniteLogits.at(draw, "flagged by the GPU sampler")
        return token


def one_slot(engine: Any, slot: int = 0) -> Any:
    if isinstance(engine, OneSlot) or not hasattr(engine, "max_batch"):
        return engine
    return OneSlot(engine, slot)


def load_one(model: Any, **options: Any) -> OneSlot:
    """CudaEngine.load(model, **options), driven through slot 0 with the one-sequence calls."""
    from cuda.engine import CudaEngine

    return OneSlot(CudaEngine.load(model, **options))
