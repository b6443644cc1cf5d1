"""The CUDA engine's VRAM estimate, importable without PyCUDA or a GPU (pool preflight).

Weights from the model's weight plan (`cuda.weights.weight_bytes`), KV cache and scratch from
the forward pass's buffer table (`cuda.forward.buffer_bytes`), the sampler's workspace and the
residency checksum slots: the bytes `CudaEngine.load` allocates. None of the modules imported
here touches PyCUDA at import time (they receive the driver as an argument).
"""

from __future__ import annotations

from cuda.forward import buffer_bytes
from cuda.sampler import workspace_bytes
from cuda.weights import weight_bytes
from runtime.gguf_file import GGUFModel

#: tokens per prefill pass (longer prompts are split); scratch is sized for this many
DEFAULT_MAX_CHUNK = 512
#: residency checksums computed per batch (one launch each, one copy back per batch)
CHECKSUM_SLOTS = 512


def vram_needed(model: GGUFModel, max_context: int, max_chunk: int = DEFAULT_MAX_CHUNK) -> int:
    """Bytes of VRAM the engine allocates for this model (weights + KV cache + scratch)."""
    c = model.config
    max_chunk = min(max_chunk, max_context)  # as CudaEngine.load clamps it
    return (
        weight_bytes(model)
        + buffer_bytes(c, max_context, max_chunk)
        + workspace_bytes(c.vocab_size)
        + 8 * CHECKSUM_SLOTS
    )
