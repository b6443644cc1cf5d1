"""VRAM exhaustion and context-poisoning errors on a real GPU.

1. Truly exhaust the card (allocate until cuMemAlloc fails, down to 4 KiB pieces): loading a
   model then fails with INSUFFICIENT_VRAM (both byte counts in the message), while a job on an
   engine loaded before still runs (all its memory was allocated at load); once the memory is
   released the load works again.
2. An illegal address poisons the CUDA context: the engine reports CudaError(fatal=True) and
   keeps saying so. Run in a subprocess, since the poisoned primary context would break every
   later test of this process.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from runtime.errors import InsufficientVram

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def model_path(cuda_ctx, tmp_path_factory):
    from tools.make_synthetic_gguf import write_synthetic_model

    return write_synthetic_model(tmp_path_factory.mktemp("m") / "syn.gguf", n_layers=2, seed=3)


def _exhaust(drv) -> list:
    hog, size = [], 1 << 30
    while size >= 4096:
        try:
            hog.append(drv.mem_alloc(size))
        except drv.MemoryError:
            size //= 2
    return hog


def test_exhausted_card_refuses_a_load_but_not_a_job_of_a_loaded_engine(model_path):
    import pycuda.driver as drv

    from cuda.engine import CudaEngine
    from runtime.gguf_file import open_gguf

    with open_gguf(model_path) as model:
        engine = CudaEngine.load(model, max_context=256, max_batch=2)
        try:
            engine.prefill(0, [1, 2, 3])
            engine.decode([0], [4])
            want = engine.logits(0)
            engine.release(0)
            hog = _exhaust(drv)
            try:
                free = drv.mem_get_info()[0]
                with pytest.raises(InsufficientVram) as info:
                    CudaEngine.load(model, max_context=256)
                assert f"{free} bytes free" in info.value.message
                for slot in (0, 1):  # a job on the full card: nothing of it is allocated now
                    engine.prefill(slot, [1, 2, 3])
                    engine.decode([slot], [4])
                    np.testing.assert_array_equal(engine.logits(slot), want)
            finally:
                for h in hog:
                    h.free()
            again = CudaEngine.load(model, max_context=256)
            assert again.check_residency().ok
            again.close()
        finally:
            engine.close()


SCRIPT = """
import sys
import pycuda.driver as drv
from cuda.engine import CudaEngine
from runtime.errors import CudaError
from runtime.gguf_file import open_gguf

with open_gguf(sys.argv[1]) as model:
    engine = CudaEngine.load(model, max_context=64)
engine.prefill(0, [1, 2])
# an RMSNorm reading and writing near address 0: an illegal address on the device
engine.ops.rms_norm(256, 256, 256, 1, 576, 1e-5, engine.stream)
for attempt in range(2):
    try:
        engine.decode([0], [3])
        engine.logits(0)
    except CudaError as exc:
        assert exc.fatal, exc
        print("fatal", attempt, exc.code)
    else:
        raise SystemExit("no error")
assert not engine.check_residency().ok
engine.close()  # frees what a dead context lets it free, and pops the context
assert engine.memory_bytes() == 0
print("done")
"""


def test_illegal_address_is_fatal(model_path):
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(SCRIPT), str(model_path)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "fatal 0 CUDA_ERROR" in proc.stdout and "fatal 1 CUDA_ERROR" in proc.stdout
    assert "done" in proc.stdout
