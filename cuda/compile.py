"""Compile the worker's CUDA sources (cuda/kernels/*.cu) into PyCUDA modules, once per process.

`load_module("quant_matvec.cu", defines={"NWARPS": 4})` reads the file, compiles it with nvcc
for the current context's device (PyCUDA picks `sm_XY` from the device), and caches the module
per (device, filename, defines). Shared headers (`*.cuh`) in the same folder are found through
`include_dirs`; PyCUDA's own disk cache (~/.cache/pycuda) hashes the preprocessed source, so an
edited header recompiles.

Kernel naming: a file that contains `extern "C"` declares its own C linkage (needed when it uses
templates or includes C++ headers) and is compiled as is; any other file is wrapped in
`extern "C" { ... }` by PyCUDA, as usual. Either way `module.get_function("name")` finds the
plain kernel name.

`load_driver_module` compiles the same way (same disk cache) but loads the cubin through the
driver API (cuda.launch.DriverModule), whose kernels can be launched with programmatic dependent
launch; the decode step's kernels come from there.

PyCUDA is imported lazily: this module is importable (e.g. for `kernel_sources()` in the nvcc
test) on machines without PyCUDA or a GPU.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pycuda.compiler import SourceModule

KERNEL_DIR = Path(__file__).resolve().parent / "kernels"

#: nvcc options for every module: -O3 for host-side stubs (device code is -O3 by default);
#: no fast-math, the kernels' accuracy is tested against float64 numpy.
NVCC_OPTIONS: tuple[str, ...] = ("-O3", "-std=c++17")

_lock = threading.Lock()
_cache: dict[tuple[Any, ...], Any] = {}


def kernel_sources() -> list[Path]:
    """Every .cu file of cuda/kernels, sorted by name (headers excluded)."""
    return sorted(KERNEL_DIR.glob("*.cu"))


def _define_options(defines: dict[str, Any] | None) -> list[str]:
    opts = []
    for name, value in sorted((defines or {}).items()):
        opts.append(f"-D{name}" if value is None else f"-D{name}={value}")
    return opts


def load_module(filename: str, *, defines: dict[str, Any] | None = None) -> SourceModule:
    """The compiled module of cuda/kernels/<filename> for the current CUDA context's device.

    `defines` become `-DNAME=VALUE` (value None: `-DNAME`). Needs a current context.
    """
    import pycuda.driver as drv
    from pycuda.compiler import SourceModule

    path = KERNEL_DIR / filename
    options = _define_options(defines)
    device = drv.Context.get_device()
    key = (device.pci_bus_id(), filename, tuple(options))
    with _lock:
        module = _cache.get(key)
        if module is None:
            source = path.read_text()
            module = SourceModule(
                source,
                options=[*NVCC_OPTIONS, *options],
                no_extern_c='extern "C"' in source,
                include_dirs=[str(KERNEL_DIR)],
            )
            _cache[key] = module
        return module


def load_driver_module(filename: str, *, defines: dict[str, Any] | None = None):
    """Like `load_module`, but a `cuda.launch.DriverModule` (kernels launchable with PDL)."""
    import pycuda.driver as drv
    from pycuda.compiler import compile as nvcc_compile

    from cuda.launch import DriverModule

    options = _define_options(defines)
    key = ("driver", drv.Context.get_device().pci_bus_id(), filename, tuple(options))
    with _lock:
        module = _cache.get(key)
        if module is None:
            source = (KERNEL_DIR / filename).read_text()
            cubin = nvcc_compile(
                source,
                options=[*NVCC_OPTIONS, *options],
                no_extern_c='extern "C"' in source,
                include_dirs=[str(KERNEL_DIR)],
            )
            module = _cache[key] = DriverModule(cubin)
        return module
