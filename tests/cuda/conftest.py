"""GPU fixtures for tests/cuda: skip cleanly without PyCUDA or a CUDA device (CI has neither).

Every test in this folder is marked `gpu` except those of the files in _NO_GPU_MARK.
`cuda_ctx` (session) makes device 0's primary context current on the test thread and pops it at
the end; tests that need the GPU take it as an argument. `kq` / `kq_mv` are the quant kernels
(every matvec build for `kq_mv`), `gpu` uploads arrays and checks guarded outputs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.cuda.checks import GUARD, SENTINEL

_NO_GPU_MARK = {
    "test_nvcc_compile.py",  # needs only nvcc
    "test_kernel_cache.py",  # pure Python; its one GPU test is marked by hand
    "test_cuda_errors.py",  # a stand-in driver
    "test_load_checks.py",  # checks made before PyCUDA is imported
    "test_upload_plan.py",  # a stand-in driver records what the upload would send
    "test_launcher_signatures.py",  # nvcc's PTX against recording stand-ins of the loaders
    "test_matvec_variant_table.py",  # the variant table against the kernel source's lists
    "test_engine_sim.py",  # the engine on the numpy stand-in for the GPU (sim_gpu.py)
    "test_engine_sim_reference.py",  # the same, on the transformers reference fixtures
}


def pytest_collection_modifyitems(config, items):
    here = Path(__file__).resolve().parent
    for item in items:
        path = Path(str(item.fspath)).resolve()
        if path.parent == here and path.name not in _NO_GPU_MARK:
            item.add_marker(pytest.mark.gpu)


@pytest.fixture(scope="session")
def cuda_ctx():
    """Device 0's primary context, current on this thread for the whole session."""
    # exc_type=ImportError: without libcuda, PyCUDA's extension fails with a plain ImportError
    drv = pytest.importorskip("pycuda.driver", reason="PyCUDA unusable", exc_type=ImportError)
    try:
        drv.init()
        if drv.Device.count() < 1:
            pytest.skip("no CUDA device")
        device = drv.Device(0)
        ctx = device.retain_primary_context()
    except drv.Error as exc:  # no driver / no device: a skip, never an error
        pytest.skip(f"CUDA unavailable: {exc}")
    ctx.push()
    try:
        yield ctx
    finally:
        drv.Context.synchronize()
        drv.Context.pop()


@pytest.fixture(scope="session")
def kq(cuda_ctx):
    from cuda.quant_ops import QuantKernels

    return QuantKernels()


@pytest.fixture(
    scope="session",
    params=[(False, True), (True, True), (False, False)],
    ids=["guarded", "batched", "no-preload"],
)
def kq_mv(request, cuda_ctx):
    """The builds of the matvec kernels: guarded slot loop (with the first slots loaded before
    the PDL wait, the default; and without), batched branch-free loop."""
    from cuda.quant_ops import QuantKernels

    batched, preload = request.param
    return QuantKernels(batched_loads=batched, preload=preload)


@pytest.fixture(scope="session")
def gpu(cuda_ctx):
    """Helpers bound to one stream: upload, guarded output buffers, download after sync."""
    import pycuda.driver as drv
    import pycuda.gpuarray as gpuarray

    class Gpu:
        stream = drv.Stream()

        @staticmethod
        def put(a: np.ndarray):
            return gpuarray.to_gpu(np.ascontiguousarray(a))

        @staticmethod
        def out(n_values: int, init: np.ndarray | None = None):
            host = np.full(n_values + GUARD, SENTINEL, np.float32)
            if init is not None:
                host[:n_values] = init.reshape(-1)
            return gpuarray.to_gpu(host)

        def get(self, buf, shape) -> np.ndarray:
            self.stream.synchronize()
            host = buf.get()
            n_values = int(np.prod(shape))
            assert np.all(host[n_values:] == SENTINEL), "kernel wrote past the end of its output"
            return host[:n_values].reshape(shape)

    return Gpu()
