"""The CUDA engine's VRAM estimate, importable without PyCUDA or a GPU (pool preflight).

Weights from the model's weight plan (`cuda.weights.weight_bytes`), KV cache, rotary tables and
scratch from the forward pass's buffer table (`cuda.forward.buffer_bytes`, with the sampling
mask's ids), the sampler's workspace and the residency checksum slots: the bytes
`CudaEngine.load` allocates. `preflight` compares them with the device's free memory. None of the modules imported
here touches PyCUDA at import time (they receive the driver as an argument).
"""

from __future__ import annotations

from cuda.forward import buffer_bytes
from cuda.sampler import SampleMask, workspace_bytes
from cuda.weights import weight_bytes
from runtime.errors import InsufficientVram
from runtime.gguf_file import GGUFModel

#: tokens per prefill pass (longer prompts are split); scratch is sized for this many
DEFAULT_MAX_CHUNK = 512
#: residency checksums computed per batch (one launch each, one copy back per batch)
CHECKSUM_SLOTS = 512
#: VRAM kept free beyond our own buffers: kernel code, the graph, driver bookkeeping
HEADROOM_BYTES = 64 << 20


def vram_needed(model: GGUFModel, max_context: int, max_chunk: int = DEFAULT_MAX_CHUNK) -> int:
    """Bytes of VRAM the engine allocates for this model (weights + KV cache + scratch)."""
    c = model.config
    max_chunk = min(max_chunk, max_context)  # as CudaEngine.load clamps it
    mask = SampleMask.of(model.metadata, c.vocab_size)
    return (
        weight_bytes(model)
        + buffer_bytes(c, max_context, max_chunk, mask.ids.size)
        + workspace_bytes(mask.n_sampled)
        + 8 * CHECKSUM_SLOTS
    )


def preflight(
    name: str, max_context: int, needed: int, free_total: tuple[int, int], cap: int | None,
    device: int,
) -> None:  # fmt: skip
    """InsufficientVram when `needed` bytes (+ headroom) exceed the free VRAM, or the cap."""
    free, total = free_total
    if needed + HEADROOM_BYTES > free:
        raise InsufficientVram(
            f"{name} with a {max_context}-token context needs {needed} bytes of VRAM "
            f"(+{HEADROOM_BYTES} headroom) but device {device} has {free} bytes free of {total}"
        )
    if cap is not None and needed > cap:
        raise InsufficientVram(
            f"{name} with a {max_context}-token context needs {needed} bytes of VRAM but "
            f"--max-vram-bytes allows {cap} ({free} bytes free on the device)"
        )
