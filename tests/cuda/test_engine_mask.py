"""The sampling mask on the GPU (runtime.models.vocab): ids that are no token are never sampled.

Two layers of synthetic qwen2 and gemma3 models, where the id the model prefers after the prompt
is made unsampleable through its token type: as a suffix of the vocabulary (Qwen2.5's padding
rows: the argmax and the sampler read only the logits before it), or among scattered ids (set
to -inf after the head by `mask_logits`, inside the decode graph). Greedy and random sampling
never pick a banned id, at the prefill and at every decode step, and agree with the numpy
engine's masked choice; `logits()` stays unmasked (tests/cuda/engine_checks.py; the same check
runs on the simulated GPU in test_engine_sim.py).
"""

from __future__ import annotations

import pytest

from tests.cuda.engine_checks import check_banned_never_sampled


@pytest.mark.parametrize(
    ("family", "suffix"), [("qwen2", True), ("qwen2", False), ("gemma3", True), ("gemma3", False)]
)
def test_a_banned_id_is_never_sampled_even_when_largest(cuda_ctx, tmp_path, family, suffix):
    from cuda.engine import CudaEngine

    check_banned_never_sampled(CudaEngine.load, tmp_path, family, suffix)
