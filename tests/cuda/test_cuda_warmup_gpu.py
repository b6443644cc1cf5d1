"""On a GPU: the warm-up retains device 0's primary context, the one PyCUDA (and so the engine)
retains too; giving the warm-up's reference back leaves PyCUDA's usable."""

from __future__ import annotations

import numpy as np

from runtime.backends import CudaWarmup


def test_the_warmup_retains_the_context_the_engine_uses(cuda_ctx):
    import pycuda.driver as drv

    warmup = CudaWarmup.start(0)
    assert warmup is not None  # PyCUDA is installed here (cuda_ctx did not skip)
    warmup._thread.join(30.0)
    assert warmup.context_handle == cuda_ctx.handle
    warmup.release()
    warmup.release()  # idempotent: one reference given back, not two
    host = np.arange(16, dtype=np.float32)
    device = drv.to_device(host)  # the context still works: PyCUDA holds its own reference
    assert np.array_equal(drv.from_device_like(device, host), host)
    device.free()
