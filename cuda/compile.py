"""Compile the worker's CUDA sources (cuda/kernels/*.cu) into loaded modules, once per process.

`load_module("quant_matvec.cu", defines={"NWARPS": 4})` reads the file, and gets its cubin for
the current context's device (`sm_XY`) from our own disk cache (cuda.kernel_cache: keyed on the
source, every shared `*.cuh` header, the options and defines, the arch and the toolchain, so a
warm start runs no nvcc at all, not even PyCUDA's `--preprocess`), or compiles it with
`pycuda.compiler.compile` (PyCUDA's own cache off) and stores it. The loaded module is cached
per (device, filename, defines) for the process. Shared headers are found through `-I`.

Kernel naming: a file that contains `extern "C"` declares its own C linkage (needed when it uses
templates or includes C++ headers) and is compiled as is; any other file is wrapped in
`extern "C" { ... }` by PyCUDA, as usual. Either way `module.get_function("name")` finds the
plain kernel name.

`load_module` returns a PyCUDA module (`pycuda.driver.module_from_buffer`: `get_function`,
`get_global`); `load_driver_module` loads the same cubin through the driver API
(cuda.launch.DriverModule), whose kernels can be launched with programmatic dependent launch;
the decode step's kernels come from there.

PyCUDA is imported lazily: this module is importable (e.g. for `kernel_sources()` in the nvcc
test) on machines without PyCUDA or a GPU.
"""

from __future__ import annotations

import functools
import logging
import os
import shutil
import threading
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from cuda import kernel_cache

KERNEL_DIR = Path(__file__).resolve().parent / "kernels"

#: nvcc options for every module: -O3 for host-side stubs (device code is -O3 by default);
#: no fast-math, the kernels' accuracy is tested against float64 numpy.
NVCC_OPTIONS: tuple[str, ...] = ("-O3", "-std=c++17")

log = logging.getLogger(__name__)
_lock = threading.Lock()
_cache: dict[tuple[Any, ...], Any] = {}  # loaded modules
_cubins: dict[str, bytes] = {}  # cache key -> cubin, shared by both loaders


def kernel_sources() -> list[Path]:
    """Every .cu file of cuda/kernels, sorted by name (headers excluded)."""
    return sorted(KERNEL_DIR.glob("*.cu"))


def _define_options(defines: dict[str, Any] | None) -> list[str]:
    opts = []
    for name, value in sorted((defines or {}).items()):
        opts.append(f"-D{name}" if value is None else f"-D{name}={value}")
    return opts


def _arch() -> str:
    import pycuda.driver as drv

    major, minor = drv.Context.get_device().compute_capability()
    return f"sm_{major}{minor}"


@functools.cache
def _toolchain() -> str:
    import pycuda
    import pycuda.driver as drv

    # get_version: the CUDA PyCUDA was built for; get_driver_version: the installed driver
    versions = (drv.get_version(), drv.get_driver_version())
    return kernel_cache.toolchain_id(
        shutil.which("nvcc"), versions, f"pycuda={pycuda.VERSION_TEXT}"
    )


def cubin(
    filename: str, *, defines: dict[str, Any] | None = None, arch: str | None = None
) -> bytes:
    """The cubin of cuda/kernels/<filename> for `arch` (default: the current context's device).

    From the disk cache when it holds this exact build, else compiled by nvcc and stored.
    """
    source = (KERNEL_DIR / filename).read_text()
    options = [*NVCC_OPTIONS, *_define_options(defines)]
    arch = arch or _arch()
    key = kernel_cache.cache_key(
        source, kernel_cache.headers(KERNEL_DIR), options, arch, _toolchain()
    )
    with _lock:
        data = _cubins.get(key)
    if data is None:

        def build() -> bytes:
            from pycuda.compiler import compile as nvcc_compile

            return nvcc_compile(
                source,
                options=options,
                no_extern_c='extern "C"' in source,
                arch=arch,
                cache_dir=False,  # ours is keyed without running the preprocessor
                include_dirs=[str(KERNEL_DIR)],
            )

        data = kernel_cache.cached(kernel_cache.cache_dir(), key, build)
        with _lock:
            _cubins[key] = data
    return data


def load_module(filename: str, *, defines: dict[str, Any] | None = None):
    """The loaded module of cuda/kernels/<filename> for the current CUDA context's device.

    `defines` become `-DNAME=VALUE` (value None: `-DNAME`). Needs a current context.
    """
    import pycuda.driver as drv

    device = drv.Context.get_device()
    key = (device.pci_bus_id(), filename, tuple(_define_options(defines)))
    with _lock:
        module = _cache.get(key)
    if module is None:
        module = drv.module_from_buffer(cubin(filename, defines=defines))
        with _lock:
            module = _cache.setdefault(key, module)
    return module


def load_driver_module(filename: str, *, defines: dict[str, Any] | None = None):
    """Like `load_module`, but a `cuda.launch.DriverModule` (kernels launchable with PDL)."""
    import pycuda.driver as drv

    from cuda.launch import DriverModule

    device = drv.Context.get_device()
    key = ("driver", device.pci_bus_id(), filename, tuple(_define_options(defines)))
    with _lock:
        module = _cache.get(key)
    if module is None:
        module = DriverModule(cubin(filename, defines=defines))
        with _lock:
            module = _cache.setdefault(key, module)
    return module


def prefetch(specs: Sequence[tuple[str, dict[str, Any] | None]]) -> None:
    """Get the cubins of these (filename, defines) ready, nvcc runs in parallel threads.

    A warm cache makes this a few file reads; a cold one (first start on a machine) compiles
    every module at once instead of one after another. Later `load_module` calls find the
    cubins in memory. Needs a current context (for the arch); the threads do not touch it.
    Best effort: a failure is logged and left to the serial `load_module` path, which raises
    it where it always did. nvcc's stderr (PyCUDA warnings) is logged, not raised.
    """
    specs = list(specs)
    if not specs:
        return
    workers = max(1, min(len(specs), os.cpu_count() or 1))
    # catch_warnings is process-wide: it also catches the threads' warnings while we wait
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            import pycuda.compiler  # noqa: F401 - imported here, not by 8 threads at once

            arch, _ = _arch(), _toolchain()
            with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="nvcc") as pool:
                futures = [pool.submit(cubin, f, defines=d, arch=arch) for f, d in specs]
                for future in futures:
                    future.result()
        except Exception as exc:
            log.warning("parallel kernel build failed, building one by one: %s", exc)
    for w in caught:
        log.warning("nvcc: %s", w.message)
