"""GPU fixtures for tests/cuda: skip cleanly without PyCUDA or a CUDA device (CI has neither).

Every test in this folder is marked `gpu` except those of the files in _NO_GPU_MARK.
`cuda_ctx` (session) makes device 0's primary context current on the test thread and pops it at
the end; tests that need the GPU take it as an argument.
"""

from __future__ import annotations

from pathlib import Path

import pytest

_NO_GPU_MARK = {
    "test_nvcc_compile.py",  # needs only nvcc
    "test_kernel_cache.py",  # pure Python; its one GPU test is marked by hand
    "test_cuda_errors.py",  # a stand-in driver
    "test_load_checks.py",  # checks made before PyCUDA is imported
    "test_upload_plan.py",  # a stand-in driver records what the upload would send
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
