"""The engines the core finds by name: the entry points register the CUDA one here.

`runtime.backends` may not import the `cuda` package (DESIGN.md's layering rule), so the top
level, which may import everything, tells it where the CUDA engine lives. The import itself
still happens only when a cuda load is asked for, so `worker-orcd --backend cpu` never imports
PyCUDA.
"""

from __future__ import annotations

from typing import Any

from runtime.backends import engine_loader, register_engine
from runtime.errors import CudaError


def load_cuda_engine(gguf, *, max_context: int, max_batch: int, progress, device: int, **opts: Any):
    try:
        from cuda.engine import CudaEngine
    except ImportError as error:
        raise CudaError(
            f"the cuda backend is unavailable here ({error}); install PyCUDA on a machine with "
            "an NVIDIA GPU (pip install 'worker-orcd[cuda]') or use --backend cpu"
        ) from error
    return CudaEngine.load(
        gguf,
        max_context=max_context,
        max_batch=max_batch,
        progress=progress,
        device=device,
        **opts,
    )


def register() -> None:
    """Called by the shared boot (and by benchmarks that load engines themselves). Keeps a
    loader registered before (a test's wrapper around this one, say)."""
    if engine_loader("cuda") is None:
        register_engine("cuda", load_cuda_engine)
