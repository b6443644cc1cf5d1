"""The one interface every backend implements: load -> prefill -> step -> release.

The executor actor owns exactly one `Engine` on one OS thread and drives it through
`runtime.generate`; nothing else touches it. Backends: `runtime.numpy_engine` (cpu, the
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


class Engine(Protocol):
    backend: str  # "cpu" | "cuda"
    config: ModelConfig
    max_context: int  # KV-cache capacity in tokens, fixed at load
    quant_kind: str  # e.g. "Q4_1", "Q4_K_M" (GGUFModel.quant_kind: the file's general.file_type)

    @property
    def position(self) -> int:
        """Tokens held in the KV cache of the current sequence."""
        ...

    def reset(self) -> None:
        """Start a new sequence: position back to 0 (no memory is freed or allocated)."""

    def prefill(self, tokens: Sequence[int]) -> None:
        """Append `tokens` in one batched causal pass; afterwards `logits()` is the last one's.

        Callers split long prompts into chunks and check for cancellation between calls.
        """

    def step(self, token: int) -> None:
        """Append one token (decode); afterwards `logits()` is its next-token distribution."""

    def logits(self) -> np.ndarray:
        """(vocab,) float32 logits of the last appended position (a host copy)."""
        ...

    def sample(self, params: SamplingParams, history: Sequence[int], draw: int) -> int:
        """Pick the next token from the current logits with the shared sampling chain.

        `history` is the token sequence so far (for repetition_penalty); `draw` is the index of
        this draw in the job (0, 1, 2, ...), which with params.seed fixes the random number.
        """
        ...

    def memory_bytes(self) -> int:
        """Bytes of model state (weights + KV cache + scratch) this engine holds."""
        ...

    def check_residency(self) -> ResidencyReport:
        """Verify model memory is still allocated where it was put and unchanged."""
        ...

    def close(self) -> None:
        """Free everything. Idempotent."""
