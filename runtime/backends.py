"""Choose and load a backend: engines are found by name in a registry.

"cpu" (runtime.numpy_engine) is registered here. "cuda" is registered by the entry points
(`worker_orcd.engines`), because the core may not import the `cuda` package (the layering rule
of DESIGN.md): the core knows an engine only by its name and the `Engine` protocol. The CUDA
engine and PyCUDA are still imported only when asked for, so the worker runs on machines
without either; asking for "cuda" there fails with a `CudaError` that says what is missing.

`CudaWarmup` starts the driver and creates the device's primary context on a side thread while
the process is still importing (load time to ready is a target, decision 0011): on the H100
machine `cuInit` took 0.10 s and creating the context 0.11-0.20 s (0.45 s in decision 0011's
runs), both inside the driver with the GIL released (ctypes), so they overlap the imports that
come before HTTP listens (0.35 s here, 1.0-1.5 s there). The engine later retains the *same*
primary context on the executor thread, instantly; the warm-up never makes the context current
anywhere, so the executor thread still is the only one that uses it.
This module imports nothing heavy at the top (numpy, gguf) so the warm-up can start first.
"""

from __future__ import annotations

import ctypes
import importlib.util
import os
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from runtime.errors import CudaError, InvalidRequest, ModelLoadError

if TYPE_CHECKING:
    from runtime.engine_api import Engine, ProgressCallback
    from runtime.gguf_file import GGUFModel

BACKENDS = ("auto", "cpu", "cuda")

#: loader(gguf, *, max_context, max_batch, progress, device, **opts) -> Engine; `gguf` is an open
#: GGUFModel
EngineLoader = Callable[..., "Engine"]
_ENGINES: dict[str, EngineLoader] = {}


def register_engine(name: str, loader: EngineLoader) -> None:
    """Make `load_engine(..., name)` use `loader` (the last registration of a name wins)."""
    _ENGINES[name] = loader


def registered_engines() -> tuple[str, ...]:
    return tuple(_ENGINES)


def engine_loader(name: str) -> EngineLoader | None:
    """The loader registered under `name` (None if there is none), e.g. to wrap it."""
    return _ENGINES.get(name)


def _load_numpy(
    gguf: GGUFModel, *, max_context: int, max_batch: int, progress, device: int, **opts
) -> Engine:
    if opts:
        raise InvalidRequest(f"the cpu backend takes no options (got {sorted(opts)})")
    from runtime.numpy_engine import NumpyEngine

    return NumpyEngine.load(gguf, max_context=max_context, max_batch=max_batch, progress=progress)


register_engine("cpu", _load_numpy)


def cuda_available() -> bool:
    """PyCUDA imports, the driver initializes, and at least one device is present."""
    try:
        import pycuda.driver as drv

        drv.init()
        return drv.Device.count() > 0
    except Exception:  # ImportError without PyCUDA or libcuda; pycuda's Error without a device
        return False


class CudaWarmup:
    """cuInit + retain device `device`'s primary context on a daemon thread; `release()` at exit.

    Best effort and silent: any failure (no libcuda, no such device) leaves the work to the
    engine, which reports it as before. The extra reference keeps the context alive, so
    `release()` comes after the engine is closed (or as soon as the cpu backend was picked); a
    `release()` that comes before the thread has retained makes the thread give it back itself.
    """

    def __init__(self, device: int = 0):
        self.device = device
        self._dev = ctypes.c_int()
        self._lib: Any = None  # set while the warm-up holds a reference
        self.context_handle: int | None = None  # the CUcontext retained (for tests and logs)
        self._released = False
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="cuda-warmup", daemon=True)

    @classmethod
    def start(cls, device: int = 0) -> CudaWarmup | None:
        """A running warm-up, or None where PyCUDA is not installed (no engine would use it)."""
        if importlib.util.find_spec("pycuda") is None:
            return None
        warmup = cls(device)
        warmup._thread.start()
        return warmup

    def _run(self) -> None:
        ctx = ctypes.c_void_p()
        try:  # ctypes calls release the GIL: the main thread keeps importing meanwhile
            lib = ctypes.CDLL("libcuda.so.1")
            if lib.cuInit(0) != 0 or lib.cuDeviceGet(ctypes.byref(self._dev), self.device) != 0:
                return
            if lib.cuDevicePrimaryCtxRetain(ctypes.byref(ctx), self._dev) != 0:
                return
        except OSError:  # no driver library on this machine
            return
        self.context_handle = ctx.value
        with self._lock:
            if not self._released:
                self._lib = lib  # release() gives it back
                return
        self._give_back(lib)

    def release(self) -> None:
        """Drop the warm-up's reference (idempotent); the engine's own reference is unaffected."""
        with self._lock:
            self._released = True
            lib, self._lib = self._lib, None
        if lib is not None:
            self._give_back(lib)

    def _give_back(self, lib: Any) -> None:
        # cuda.h maps cuDevicePrimaryCtxRelease to the _v2 entry point since CUDA 11.
        release = getattr(lib, "cuDevicePrimaryCtxRelease_v2", None)
        (release or lib.cuDevicePrimaryCtxRelease)(self._dev)


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
    max_batch: int = 1,
    progress: ProgressCallback | None = None,
    gpu_device: int = 0,
    **opts: Any,
) -> Engine:
    """Load `model` (a path, or an already opened GGUFModel, left open) on `backend`.

    `max_context` (KV-cache capacity of one sequence slot in tokens) must not exceed the model's
    trained context; `max_batch` is the number of slots (sequences decoded together).
    Extra keyword options go to the engine's loader (the cpu one takes none).
    """
    from runtime.gguf_file import GGUFModel, open_gguf

    backend = pick_backend(backend)
    owned = not isinstance(model, GGUFModel)
    gguf = open_gguf(model) if owned else model
    try:
        if not 1 <= max_context <= gguf.config.context_length:
            raise ModelLoadError(
                f"{gguf.path}: max_context {max_context} is outside 1..{gguf.config.context_length}"
                " (the model's trained context length)"
            )
        if backend == "cuda" and not cuda_available():
            raise CudaError(
                "the cuda backend needs PyCUDA and an NVIDIA GPU, and this machine lacks one "
                "(pip install 'worker-orcd[cuda]' on a GPU host, or use --backend cpu)"
            )
        loader = _ENGINES.get(backend)
        if loader is None:
            raise CudaError(
                f"no {backend} engine is registered in this process (the entry points in "
                "worker_orcd register it: worker_orcd.engines.register())"
            )
        return loader(
            gguf,
            max_context=max_context,
            max_batch=max_batch,
            progress=progress,
            device=gpu_device,
            **opts,
        )
    finally:
        if owned:
            gguf.close()  # every engine holds its own copy of the weights after load
