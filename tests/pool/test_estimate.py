"""The preflight's memory estimate against what the engines really hold, and preflight on files."""

from __future__ import annotations

import attrs
import pytest

from pool_managerd.errors import PoolError
from pool_managerd.estimate import effective_context, host_memory_needed
from pool_managerd.preflight import ModelFacts, check_fits, examine
from runtime.config import DEFAULT_MAX_BATCH
from runtime.default_model import default_model_path
from runtime.gguf_file import open_gguf
from runtime.numpy_engine import NumpyEngine


@pytest.mark.parametrize(("max_context", "max_batch"), [(64, 1), (64, 4), (2048, 1)])
def test_cpu_estimate_equals_the_numpy_engines_memory(max_context, max_batch):
    with open_gguf(default_model_path()) as model:
        estimate = host_memory_needed(model, max_context, max_batch)
        engine = NumpyEngine.load(model, max_context=max_context, max_batch=max_batch)
        try:
            assert estimate == engine.memory_bytes()  # the engine counts its own arrays
        finally:
            engine.close()


def test_examine_reports_the_workers_context_and_bytes():
    facts = examine(default_model_path(), device_kind="cpu", max_context=None)
    assert facts.arch == "llama" and facts.quant_kind == "Q4_1"
    assert facts.max_context == 2048  # the worker's default, under the model's 8192
    assert facts.max_batch == DEFAULT_MAX_BATCH  # the slots the pool starts its workers with
    with open_gguf(default_model_path()) as model:
        assert effective_context(model, 10**6) == model.config.context_length
        assert facts.bytes_needed == host_memory_needed(model, 2048, DEFAULT_MAX_BATCH)


def test_gpu_estimate_is_the_cuda_engines_own():
    """Importable without PyCUDA; the number the CUDA engine allocates from (cuda.engine)."""
    from cuda.engine import vram_needed

    facts = examine(default_model_path(), device_kind="cuda", max_context=512, max_batch=4)
    with open_gguf(default_model_path()) as model:
        # every slot's KV cache counts: a worker holding more than its reservation is refused
        # at its ready callback (found on an H200, 2026-12-02: 16 slots, 1 reserved)
        assert facts.bytes_needed == vram_needed(model, 512, max_batch=4)
        assert facts.bytes_needed > vram_needed(model, 512, max_batch=1)
        assert facts.bytes_needed < host_memory_needed(model, 512, 4)  # quantized in VRAM


def test_check_fits():
    facts = ModelFacts(default_model_path(), "llama", "Q4_1", 1, 2048, bytes_needed=100)
    check_fits(facts, device_id="cpu", total=1000, allocated=900, available=100)
    with pytest.raises(PoolError) as caught:
        check_fits(attrs.evolve(facts, bytes_needed=101), device_id=0, total=1000,
                   allocated=900, available=100)  # fmt: skip
    body = caught.value.to_body()["error"]
    assert body["code"] == "INSUFFICIENT_VRAM" and caught.value.status == 409
    assert body["details"] == {"gpu_id": 0, "needed_bytes": 101, "available_bytes": 100,
                               "total_bytes": 1000, "allocated_bytes": 900, "max_context": 2048}  # fmt: skip
