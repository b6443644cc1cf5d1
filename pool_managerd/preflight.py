"""Preflight of `POST /v2/workers/start`: is this a model a worker can serve on this device?

Two halves, because they run in different places:

- `examine(path, device_kind, max_context)` reads the file (on a worker thread: the GGUF
  header of a real model takes ~0.1 s of Python): a valid GGUF of a supported architecture
  whose every tensor type and shape the chosen backend's kernels take, and the memory the
  worker will need. Anything else is MODEL_INCOMPATIBLE (422) with the reason. The checks are
  the worker's own (`runtime.gguf_file.open_gguf`, the CUDA engine's `check_model`), so the
  pool refuses exactly the files the worker would fail to load, before a process is spent.
- `check_fits(...)` compares that number with what the device has left, on the trio thread
  right before the reservation, so two starts racing for one device cannot both be admitted.
  Short: INSUFFICIENT_VRAM (409) with needed, available, total and allocated bytes.
"""

from __future__ import annotations

from pathlib import Path

import attrs

from pool_managerd.errors import PoolError
from pool_managerd.estimate import effective_context, memory_needed
from runtime.config import DEFAULT_MAX_BATCH
from runtime.errors import ErrorCode, ModelLoadError


@attrs.frozen
class ModelFacts:
    path: Path
    arch: str
    quant_kind: str
    file_bytes: int
    max_context: int  # the KV-cache tokens the worker will allocate (and is told to)
    bytes_needed: int  # device memory the worker will hold
    max_batch: int = 1  # the sequence slots (each a KV cache) it will allocate (and is told to)


def incompatible(message: str, path: Path, **details) -> PoolError:
    return PoolError(
        message,
        code=ErrorCode.MODEL_INCOMPATIBLE,
        field="model_ref",
        details={"path": str(path), **details},
    )


def examine(
    path: Path, *, device_kind: str, max_context: int | None, max_batch: int = DEFAULT_MAX_BATCH
) -> ModelFacts:
    """Blocking: open and check the file for `device_kind` ("cpu" | "cuda"); PoolError if not."""
    from runtime.gguf_file import open_gguf

    try:
        model = open_gguf(path)
    except ModelLoadError as error:
        raise incompatible(f"not a model a worker can serve: {error.message}", path) from None
    with model:
        context = effective_context(model, max_context)
        try:
            _check_backend(model, device_kind, context)
        except ModelLoadError as error:
            raise incompatible(
                f"the {device_kind} backend cannot run this model: {error.message}",
                path,
                arch=model.config.arch,
                backend=device_kind,
            ) from None
        return ModelFacts(
            path=path,
            arch=model.config.arch,
            quant_kind=model.quant_kind,
            file_bytes=path.stat().st_size,
            max_context=context,
            max_batch=max_batch,
            bytes_needed=memory_needed(
                model, device_kind=device_kind, max_context=context, max_batch=max_batch
            ),
        )


def _check_backend(model, device_kind: str, max_context: int) -> None:
    c = model.config
    if device_kind == "cuda":
        from cuda.engine import DEFAULT_MAX_CHUNK
        from cuda.weights import check_model

        check_model(model, max_context, min(DEFAULT_MAX_CHUNK, max_context))
    elif c.rope_style not in ("norm", "neox"):  # what the numpy engine refuses at load
        raise ModelLoadError(f"rope style {c.rope_style!r} is not supported")


def check_fits(
    facts: ModelFacts, *, device_id: object, total: int, allocated: int, available: int
) -> None:
    if facts.bytes_needed > available:
        raise PoolError(
            f"device {device_id} has {available} bytes available, "
            f"the model needs {facts.bytes_needed}",
            code=ErrorCode.INSUFFICIENT_VRAM,
            field="gpu_id",
            details={
                "gpu_id": device_id,
                "needed_bytes": facts.bytes_needed,
                "available_bytes": available,
                "total_bytes": total,
                "allocated_bytes": allocated,
                "max_context": facts.max_context,
            },
        )
