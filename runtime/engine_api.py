"""The one interface every backend implements: slots, prefill, batched decode, sample, release.

The executor actor owns exactly one `Engine` on one OS thread and drives it through the step
loop of `runtime.batcher`; nothing else touches it. Backends: `runtime.numpy_engine` (cpu, the
reference) and `cuda.engine` (the product). Both must give the same greedy tokens.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

import attrs
import numpy as np

from runtime.model_config import ModelConfig
from runtime.sampling import SamplingParams

#: progress(done_bytes, total_bytes): called while a model loads; see runtime.progress.
ProgressCallback = Callable[[int, int], None]


@attrs.frozen
class ResidencyReport:
    """Outcome of one residency check: is the model's memory still where we put it, intact?"""

    ok: bool
    checked_bytes: int  # bytes of model state the check covered
    detail: str  # human-readable; names the first violation when not ok


#: What `Engine.sample` returns for a slot whose logits hold NaN or infinity (the sequence then
#: ends with NON_FINITE_LOGITS; the other slots of the call are unaffected).
NON_FINITE = -1


class Engine(Protocol):
    """The model in memory with `max_batch` sequence slots, each a KV cache of `max_context`.

    The caller (`runtime.batcher.Batcher`) owns the slots: it picks a free index, feeds its
    sequence, and releases it; the engine owns the memory, all of it allocated at load (nothing
    is allocated per step): a loader takes `max_context` and `max_batch` (runtime.backends;
    `CudaEngine.load(gguf, max_context=..., max_batch=..., ...)`). Every call names its slots, and a slot's results depend on that
    slot's tokens only: not on which other slots run, nor on when (batch invariance, see
    specs/decisions/0026-batch-slots-step-loop.md).
    """

    backend: str  # "cpu" | "cuda"
    config: ModelConfig
    max_context: int  # KV-cache capacity of one slot in tokens, fixed at load
    max_batch: int  # slots, fixed at load (1 .. 64)
    prefill_chunk: int  # the prompt tokens one `prefill` call takes at most
    quant_kind: str  # e.g. "Q4_1", "Q4_K_M" (GGUFModel.quant_kind: the file's general.file_type)

    def position(self, slot: int) -> int:
        """Tokens held in `slot`'s KV cache."""
        ...

    def prefill(self, slot: int, tokens: Sequence[int]) -> None:
        """Append `tokens` (at most `prefill_chunk`) to `slot` in one causal pass; afterwards
        `logits(slot)` is the last one's. Callers split long prompts into chunks whose
        boundaries depend on the prompt alone, and check for cancellation between calls."""

    def decode(self, slots: Sequence[int], tokens: Sequence[int]) -> None:
        """Append one token to each of `slots` (distinct) in one batched pass; afterwards
        `logits(slot)` is each one's next-token distribution. May return before the work is
        done (the GPU): `sample` and `logits` wait for it."""

    def logits(self, slot: int) -> np.ndarray:
        """(vocab,) float32 logits of `slot`'s last appended position (a host copy)."""
        ...

    def sample(
        self,
        slots: Sequence[int],
        params: Sequence[SamplingParams],
        histories: Sequence[Sequence[int]],
        draws: Sequence[int],
    ) -> list[int]:
        """Pick each slot's next token from its current logits with the shared sampling chain.

        `histories[i]` is slot i's token sequence so far (for repetition_penalty); `draws[i]` the
        index of this draw in its job (0, 1, 2, ...), which with params[i].seed fixes the random
        number. A slot whose logits are not all finite gets `NON_FINITE`.
        """
        ...

    def release(self, slot: int) -> None:
        """The slot's sequence is over: position back to 0 (no memory is freed or allocated)."""

    def memory_bytes(self) -> int:
        """Bytes of model state (weights + KV cache + scratch) this engine holds."""
        ...

    def check_residency(self) -> ResidencyReport:
        """Verify model memory is still allocated where it was put and unchanged."""
        ...

    def close(self) -> None:
        """Free everything. Idempotent."""
