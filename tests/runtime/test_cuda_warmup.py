"""`CudaWarmup` (runtime.backends) and the CLI's startup bookkeeping, on any machine.

The warm-up is best effort: where there is no driver, no device of that ordinal or no PyCUDA it
holds nothing and `release()` does nothing. The GPU side (the engine retains the very context the
warm-up created) is checked in tests/cuda/test_cuda_warmup_gpu.py.
"""

from __future__ import annotations

import gc
import importlib.util
import io
import signal
import sys

from runtime.backends import CudaWarmup
from runtime.cli import EXIT_CRASH
from runtime.config import WorkerConfig
from worker_orcd.cli import run

JOIN_S = 30.0


def test_a_warmup_for_a_device_that_does_not_exist_holds_nothing():
    warmup = CudaWarmup(device=10_000)  # no machine has this ordinal; without libcuda: no driver
    warmup._thread.start()
    warmup._thread.join(JOIN_S)
    assert not warmup._thread.is_alive()
    assert warmup._lib is None and warmup.context_handle is None
    warmup.release()
    warmup.release()  # idempotent


def test_no_warmup_without_pycuda():
    started = CudaWarmup.start(0)
    try:
        assert (started is None) == (importlib.util.find_spec("pycuda") is None)
    finally:
        if started is not None:
            started.release()


def test_run_gives_the_collector_back_after_a_failed_start(tmp_path, monkeypatch):
    # `run` turns the collector off for the startup; a worker that never got ready (here: no
    # model file) must not leave it off for whoever called `run` in-process.
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    handlers = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    config = WorkerConfig(
        model=tmp_path / "missing.gguf", port=0, worker_id="t", backend="cpu", max_context=64
    )
    assert gc.isenabled()
    try:
        assert run(config) == EXIT_CRASH
        assert gc.isenabled()
        assert "missing.gguf" in sys.stderr.getvalue()
    finally:
        for signum, handler in handlers.items():
            signal.signal(signum, handler)
