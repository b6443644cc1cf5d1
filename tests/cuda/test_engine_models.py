"""The CUDA engine on the real files of the three catalog models, against the numpy engine and
against llama.cpp. A model runs where its file is present (the catalog cache or
$WORKER_ORCD_MODELS_DIR, e.g. /root/models on the GPU machine; SmolLM2 also as its installed
package) and is skipped, saying how to get it, where not.

For each model, llama.cpp's teacher-forcing prompts (`tests.reference_data.
teacher_forcing_prompts`): the prompt ids are prefilled, then llama.cpp's chosen ids are fed one
by one, a decode step each, into the CUDA engine and the numpy engine. At every position:

1. the GPU logits are within LOGIT_RTOL (relative L2 of the whole vector) of the numpy engine's.
   The bound is decision 0009's for SmolLM2, 1e-2, for all three: its sources are the same for
   every family (K/V kept in fp16, X and W of the prefill products rounded to fp16 on tensor
   cores), measured 2e-3 .. 5.5e-3 on SmolLM2 on an H100; the same sequences on the simulated
   GPU, which rounds the same way (tests/cuda/sim_gpu.py), measure SIM_MEASURED below. A kernel
   fault gives errors of 0.1 .. 1.
2. llama.cpp's token ranks first at >= TOP1_REQUIRED of the steps (Qwen 95 %, Gemma 93 %,
   SmolLM2 90 %) and within the top 5 at every step (ties toward the lower id, as greedy).
"""

from __future__ import annotations

import time

import numpy as np
import pytest

from tests.reference_data import TOP1_REQUIRED, catalog_model_file, rank_of, teacher_forcing_prompts

MODELS = list(TOP1_REQUIRED)
LOGIT_RTOL = {name: 1e-2 for name in MODELS}
#: the same runs on the simulated GPU (2-core dev machine, 2026-12): worst relative logit error
#: vs numpy, and top-1 agreement with llama.cpp (Qwen 66/66, Gemma 95/96, SmolLM2 63/67)
SIM_MEASURED = {"smollm2-135m": 2.6e-3, "qwen2.5-coder-0.5b": 1.5e-3, "gemma3-270m": 6.9e-4}


def teacher_forced_run(gpu, ref, prompts) -> tuple[list[float], list[int]]:
    """(relative logit error vs ref at every position, llama.cpp's token's rank on the GPU)."""
    errors, ranks = [], []
    for prompt_ids, next_ids in prompts:
        for e in (gpu, ref):
            e.reset()
            e.prefill(prompt_ids)
        for j, token in enumerate(next_ids):
            got, want = gpu.logits(), ref.logits()
            errors.append(
                float(np.linalg.norm(got.astype(np.float64) - want) / np.linalg.norm(want))
            )
            ranks.append(rank_of(got, token))
            if j + 1 < len(next_ids):
                for e in (gpu, ref):
                    e.step(token)
    return errors, ranks


@pytest.fixture(scope="module", params=MODELS)
def run(request, cuda_ctx):
    from cuda.engine import CudaEngine
    from runtime.gguf_file import open_gguf
    from runtime.numpy_engine import NumpyEngine
    from runtime.tokenizer import Tokenizer

    name = request.param
    path = catalog_model_file(name)
    with open_gguf(path) as gguf:
        prompts = teacher_forcing_prompts(name, Tokenizer.from_metadata(gguf.metadata))
        ctx = max(len(p) + len(n) for p, n in prompts)
        t0 = time.monotonic()
        gpu = CudaEngine.load(gguf, max_context=ctx)
        ref = NumpyEngine.load(gguf, max_context=ctx)
        loaded = time.monotonic() - t0
    try:
        t0 = time.monotonic()
        errors, ranks = teacher_forced_run(gpu, ref, prompts)
        print(
            f"\n{name}: loaded both engines in {loaded:.1f} s, {len(ranks)} teacher-forced "
            f"positions in {time.monotonic() - t0:.1f} s"
        )
    finally:
        gpu.close()
        ref.close()
    return name, errors, ranks


def test_gpu_logits_within_the_bound_of_the_numpy_engine(run):
    name, errors, _ = run
    print(f"{name}: GPU vs numpy relative logit error max {max(errors):.2e} "
          f"mean {np.mean(errors):.2e} (bound {LOGIT_RTOL[name]:.0e})")  # fmt: skip
    assert max(errors) < LOGIT_RTOL[name]


def test_gpu_teacher_forcing_against_llama_cpp(run):
    name, _, ranks = run
    top1 = ranks.count(0) / len(ranks)
    print(f"{name}: GPU teacher forcing vs llama.cpp top-1 {ranks.count(0)}/{len(ranks)} = "
          f"{top1:.1%}, worst rank {max(ranks)}")  # fmt: skip
    assert len(ranks) > 60
    assert max(ranks) < 5, ranks
    assert top1 >= TOP1_REQUIRED[name]
