"""Choose and load a backend: "cpu" (runtime.numpy_engine) or "cuda" (cuda.engine, imported lazily).

The CUDA engine and PyCUDA are imported only when asked for, so the worker runs on machines
without either; asking for "cuda" there fails with a `CudaError` that says what is missing.
"""

from __future__ import annotations

import os
from typing import Any

from runtime.engine_api import Engine, ProgressCallback
from runtime.errors import CudaError, InvalidRequest, ModelLoadError
from runtime.gguf_file import GGUFModel, open_gguf

BACKENDS = ("auto", "cpu", "cuda")


def cuda_available() -> bool:
    """PyCUDA imports, the driver initializes, and at least one device is present."""
    try:
        import pycuda.driver as drv

        drv.init()
        return drv.Device.count() > 0
    except Exception:  # ImportError without PyCUDA or libcuda; pycuda's Error without a device
        return False


def pick_backend(requested: str = "auto") -> str:
    """ "auto" -> "cuda" where a GPU and PyCUDA exist, else "cpu"; "cpu"/"cuda" pass through."""
    if requested not in BACKENDS:
        raise InvalidRequest(
            f"unknown backend {requested!r} (choose one of {', '.join(BACKENDS)})", field="backend"
        )
    if requested == "auto":
        return "cuda" if cuda_available() else "cpu"
    return requested


def load_engine(
    model: str | os.PathLike[str] | GGUFModel,
    backend: str = "cpu",
    *,
    max_context: int,
    progress: ProgressCallback | None = None,
    gpu_device: int = 0,
    **opts: Any,
) -> Engine:
    """Load `model` (a path, or an already opened GGUFModel, left open) on `backend`.

    `max_context` (KV-cache capacity in tokens) must not exceed the model's trained context.
    Extra keyword options go to the CUDA engine only.
    """
    backend = pick_backend(backend)
    owned = not isinstance(model, GGUFModel)
    gguf = open_gguf(model) if owned else model
    try:
        if not 1 <= max_context <= gguf.config.context_length:
            raise ModelLoadError(
                f"{gguf.path}: max_context {max_context} is outside 1..{gguf.config.context_length}"
                " (the model's trained context length)"
            )
        if backend == "cpu":
            if opts:
                raise InvalidRequest(f"the cpu backend takes no options (got {sorted(opts)})")
            from runtime.numpy_engine import NumpyEngine

            return NumpyEngine.load(gguf, max_context=max_context, progress=progress)
        if not cuda_available():
            raise CudaError(
                "the cuda backend needs PyCUDA and an NVIDIA GPU, and this machine lacks one "
                "(pip install 'worker-orcd[cuda]' on a GPU host, or use --backend cpu)"
            )
        try:
            from cuda.engine import CudaEngine
        except ImportError as e:
            raise CudaError(
                f"the cuda backend is unavailable here ({e}); install PyCUDA on a machine with "
                "an NVIDIA GPU (pip install 'worker-orcd[cuda]') or use --backend cpu"
            ) from e
        return CudaEngine.load(
            gguf, max_context=max_context, progress=progress, device=gpu_device, **opts
        )
    finally:
        if owned:
            gguf.close()  # every engine holds its own copy of the weights after load
