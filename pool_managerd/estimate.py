"""How much device memory a worker will take: the number preflight compares with the device.

One function, `memory_needed`:

- a GPU device: `cuda.estimate.vram_needed` (pure: importable without PyCUDA), the same buffer table
  the CUDA engine allocates from, so the estimate is what the worker will hold;
- the cpu device: the numpy engine's host arrays, computed from the file the way the engine
  lays them out (every weight dequantized to fp32, the fp32 KV cache, the rotary tables and
  the logits row). `tests/pool/test_estimate.py` checks it against a loaded engine's
  `memory_bytes()`.
"""

from __future__ import annotations

import math

from runtime.config import DEFAULT_MAX_CONTEXT
from runtime.gguf_file import GGUFModel

FP32 = 4


def effective_context(model: GGUFModel, max_context: int | None) -> int:
    """The KV-cache length the worker will allocate: as the worker's loader clamps it."""
    return min(max_context or DEFAULT_MAX_CONTEXT, model.config.context_length)


def memory_needed(
    model: GGUFModel, *, device_kind: str, max_context: int, max_batch: int = 1
) -> int:
    """With `max_batch` sequence slots of `max_context` tokens, as the worker is started with."""
    if device_kind == "cuda":
        from cuda.estimate import vram_needed

        return vram_needed(model, max_context, max_batch=max_batch)
    return host_memory_needed(model, max_context, max_batch)


def host_memory_needed(model: GGUFModel, max_context: int, max_batch: int = 1) -> int:
    c = model.config
    weights = FP32 * sum(math.prod(t.shape) for t in model.tensors.values())
    # k and v of every slot, and every slot's logits row
    kv_cache = 2 * FP32 * max_batch * c.n_layers * c.n_kv_heads * max_context * c.head_dim
    rope = 2 * FP32 * max_context * (c.rope_dim // 2)  # cos and sin tables
    return weights + kv_cache + rope + FP32 * max_batch * c.vocab_size
