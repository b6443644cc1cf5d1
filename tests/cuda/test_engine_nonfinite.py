"""REL-7 on the GPU: the probe refuses a NaN model, and NaN met at run time is NonFiniteLogits on
every sampling path (the sampler kernels after a prefill, the captured step's argmax).

Files: SmolLM2's widths (the CUDA engine's tested shapes), one layer, a 400-token vocabulary,
written by tools.make_synthetic_gguf and poisoned by tests.poisoned_gguf.
"""

from __future__ import annotations

import pytest

from runtime.errors import ModelLoadError, NonFiniteLogits
from runtime.sampling import SamplingParams
from tests.cuda.one_slot import one_slot
from tests.poisoned_gguf import poison_rows

POISONED = 3 + ord("q")  # the synthetic vocabulary's byte token for "q"; not a probe token


def _load(path):
    from cuda.engine import CudaEngine
    from runtime.gguf_file import open_gguf

    with open_gguf(path) as model:
        return CudaEngine.load(model, max_context=64)  # the slot interface, as probed() takes it


def _file(tmp_path, *, tied: bool):
    from tools.make_synthetic_gguf import write_synthetic_model

    path = write_synthetic_model(
        tmp_path / "m.gguf", n_layers=1, vocab_size=400, seed=3, tied_output=tied
    )
    return poison_rows(path, "token_embd.weight", [POISONED])


def test_the_probe_refuses_a_nan_model_on_the_gpu(cuda_ctx, tmp_path):
    from runtime.model_checks import probed

    engine = _load(_file(tmp_path, tied=True))  # tied: the NaN row is also an output row
    with pytest.raises(ModelLoadError, match="probe forward pass failed"):
        probed(engine, "m.gguf")
    assert engine.memory_bytes() == 0  # closed by probed()


@pytest.mark.parametrize("graph_step", [False, True])
def test_nan_at_run_time_raises_on_every_gpu_sampling_path(cuda_ctx, tmp_path, graph_step):
    from runtime.model_checks import probed

    engine = one_slot(probed(_load(_file(tmp_path, tied=False))))
    clean, greedy = 3 + ord("z"), SamplingParams(temperature=0.0)
    try:
        for params in (greedy, SamplingParams(temperature=0.8, seed=5)):
            engine.reset()
            if graph_step:  # finite after the prefill; the step feeds the NaN row
                engine.prefill([clean])
                assert 0 <= engine.sample(params, [clean], 0) < 400
                engine.step(POISONED)
            else:  # the NaN row is in the prompt: the sampler kernels see NaN
                engine.prefill([clean, POISONED])
            with pytest.raises(NonFiniteLogits):
                engine.sample(params, [clean, POISONED], 1)
        engine.reset()  # the engine goes on serving
        engine.prefill([clean, clean])
        token = engine.sample(greedy, [clean], 0)
        assert 0 <= token < 400
        engine.step(token)
        assert 0 <= engine.sample(greedy, [clean, token], 1) < 400
    finally:
        engine.close()
