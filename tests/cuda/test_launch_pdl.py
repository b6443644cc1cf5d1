"""cuda.launch: kernels launched through the driver API, with and without programmatic dependent
launch (PDL), eagerly and captured in a graph.

The PDL chain test runs many dependent read-modify-write kernels back to back: each may start
before the previous one ends and must wait (griddepcontrol.wait) before touching the data, so a
missing or misplaced wait shows up as a wrong sum. Integers in float32 keep every sum exact.
"""

from __future__ import annotations

import numpy as np
import pytest

N = 1 << 16
CHAIN = 200


@pytest.fixture(scope="module")
def kernels(cuda_ctx):
    import pycuda.driver as drv

    from cuda.compile import load_driver_module

    ew = load_driver_module("elementwise.cu")
    return drv, ew.get_function("add_inplace").prepare("PPi"), drv.Stream()


@pytest.mark.parametrize("pdl", [False, True])
@pytest.mark.parametrize("in_graph", [False, True])
def test_dependent_chain_is_exact(kernels, pdl, in_graph):
    from cuda import graph as cuda_graph

    drv, add, stream = kernels
    rng = np.random.default_rng(1)
    y = rng.integers(-50, 50, N).astype(np.float32)
    x_dev, y_dev = drv.to_device(np.zeros(N, np.float32)), drv.to_device(y)

    def enqueue() -> int:
        for _ in range(CHAIN):  # few blocks, so blocks of neighbours overlap under PDL
            add.prepared_async_call((64, 1), (256, 1, 1), stream, x_dev, y_dev, N, pdl=pdl)
        return CHAIN

    if in_graph:
        g = cuda_graph.capture(stream, enqueue)
        try:
            g.launch()
            g.launch()
        finally:
            stream.synchronize()
            g.close()
        want = 2 * CHAIN * y
    else:
        enqueue()
        want = CHAIN * y
    stream.synchronize()
    np.testing.assert_array_equal(drv.from_device(x_dev, (N,), np.float32), want)


def test_argument_packing(kernels):
    """Pointer, int and float arguments reach the kernel at the right offsets (rms_norm takes
    P P P i f: a float after an int after three pointers)."""
    from cuda.compile import load_driver_module

    drv, _, stream = kernels
    rms = load_driver_module("norm.cu").get_function("rms_norm").prepare("PPPif")
    rng = np.random.default_rng(2)
    rows, cols, eps = 3, 576, 1e-5
    x = rng.standard_normal((rows, cols)).astype(np.float32)
    w = rng.standard_normal(cols).astype(np.float32)
    y = drv.mem_alloc(x.nbytes)
    rms.prepared_async_call(
        (rows, 1), (256, 1, 1), stream, drv.to_device(x), drv.to_device(w), y, cols, eps, pdl=True
    )
    stream.synchronize()
    got = drv.from_device(y, x.shape, np.float32)
    x64 = x.astype(np.float64)
    want = x64 / np.sqrt((x64**2).mean(axis=1, keepdims=True) + eps) * w
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    with pytest.raises(TypeError):
        rms.prepared_async_call((1, 1), (32, 1, 1), stream, y, y)
