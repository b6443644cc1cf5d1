"""GPU sampling: the shared chain of runtime.sampling run by one kernel; only the id comes back.

The kernel writes the chosen id into `out_ptr` in device memory, which the engine points at the
decode step's input slot (`state.ids[0]`), so the next step needs no upload; the host gets a
4-byte copy through a small pinned buffer (not model state). The random number is the shared
`uniform(seed, draw)`, computed on the host and passed as a double: bit-identical to the CPU
chain by construction. Repetition penalty: the host passes the distinct history ids (np.unique),
the kernel marks them in a per-vocabulary byte array and penalizes each once.

The sampler's workspace (penalty ids, marks, float64 scores) belongs to the running job: the
engine allocates it under ledger scope "job" at the job's first prefill (where an out-of-memory
during a job shows up) and keeps it after the job's last token: the engine is not told when a
job ends, so the workspace is freed at the next `reset()` (the next job's start) or when a job
fails (the engine then frees the whole "job" scope).

Ids that are no token (padding rows of the head, runtime.models.vocab) are never sampled
(`SampleMask`): when they are the end of the vocabulary (Qwen2.5: 151,665..151,935) the sampler
and the decode step's argmax read only the logits before them; otherwise the forward pass sets
them to a finite -3e38 after the head (one small launch: `Ops.mask_logits`), keeping the values it
overwrote for `logits()`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import attrs
import numpy as np

from cuda.ledger import Ledger
from cuda.ops import Ops
from runtime.errors import ModelLoadError
from runtime.models.vocab import sampled_prefix, unsampleable_ids
from runtime.sampling import SamplingParams, uniform

_WS = ("job.sample.pen_ids", "job.sample.marks", "job.sample.xs")


def workspace_bytes(vocab: int) -> int:
    return vocab * (4 + 1 + 8)


@attrs.frozen(eq=False)
class SampleMask:
    """What sampling may pick: logits [0, n_sampled) (the sampler's and the argmax's range),
    except `ids` (int32, sorted; empty when the unsampleable ids are a suffix), which the
    forward pass sets to -3e38 after the head (`Ops.mask_logits`)."""

    n_sampled: int
    ids: np.ndarray

    @classmethod
    def of(cls, metadata: Mapping[str, Any], n_logits: int) -> SampleMask:
        banned = unsampleable_ids(metadata, n_logits)
        n = sampled_prefix(banned, n_logits)
        if n == 0:
            raise ModelLoadError(f"none of the {n_logits} logits is a token that can be sampled")
        if n is not None:
            return cls(n, np.zeros(0, np.int32))
        return cls(n_logits, banned.astype(np.int32))


class GpuSampler:
    def __init__(
        self,
        drv: Any,
        ops: Ops,
        ledger: Ledger,
        stream: Any,
        *,
        vocab: int,
        logits: int,
        out: int,
        host: np.ndarray,
    ):
        self._drv, self._ops, self._ledger, self._stream = drv, ops, ledger, stream
        self.vocab, self._logits, self._out = vocab, logits, out
        self._host = host  # (1,) int32 pinned: the sampled id lands here

    @property
    def has_workspace(self) -> bool:
        return self._ledger.has(_WS[0])

    def acquire_workspace(self) -> None:
        """Allocate the job's workspace (AllocationFailed when VRAM is short)."""
        if self.has_workspace:
            return
        try:
            self._ledger.alloc(_WS[0], 4 * self.vocab, scope="job")
            self._ledger.alloc(_WS[1], self.vocab, scope="job", zero=True)  # all zero at rest
            self._ledger.alloc(_WS[2], 8 * self.vocab, scope="job")
        except BaseException:
            self.release_workspace()
            raise

    def release_workspace(self) -> None:
        for name in _WS:
            self._ledger.free(name)

    def sample(self, params: SamplingParams, history: Sequence[int], draw: int) -> int:
        """Enqueue the sampling kernel, wait for it, return the id (also left in `out`)."""
        self.acquire_workspace()
        led = self._ledger
        pen_ids, marks = led.ptr(_WS[0]), led.ptr(_WS[1])
        n_pen = 0
        if params.repetition_penalty != 1.0:
            ids = np.unique(np.fromiter(history, dtype=np.int64))
            ids = ids[(ids >= 0) & (ids < self.vocab)].astype(np.int32)
            n_pen = int(ids.size)
            if n_pen:
                self._drv.memcpy_htod(pen_ids, ids)  # synchronous: the previous kernel is done
        penalty = float(params.repetition_penalty)
        if params.temperature == 0.0:
            self._ops.sample_greedy(
                self._logits, self.vocab, pen_ids, n_pen, penalty, marks, self._out, self._stream
            )
        else:
            self._ops.sample_full(
                self._logits, self.vocab, pen_ids, n_pen, penalty, marks,
                temperature=float(params.temperature), top_k=int(params.top_k),
                top_p=float(params.top_p), min_p=float(params.min_p),
                u=uniform(params.seed, draw), xs=led.ptr(_WS[2]), out=self._out,
                stream=self._stream,
            )  # fmt: skip
        self._drv.memcpy_dtoh_async(self._host, self._out, self._stream)
        self._stream.synchronize()
        return int(self._host[0])
