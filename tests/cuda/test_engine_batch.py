"""Slots on the GPU (issue 13): batch invariance and slots against the numpy engine, for the
three families the CUDA engine serves, on synthetic files of their real shapes (2 layers).

The same checks as the simulated GPU's (tests/cuda/engine_checks.py), at 64 slots for every
family: a seeded job gives the same token ids and bitwise the same logits alone, beside 7
others, beside 63 others joining late (its prompt spanning two prefill chunks) and alone again,
greedy and at temperature 0.8; three slots decoded together each match the numpy engine. Also
the single-slot speed path: a 64-slot engine's slot 0 replays the very graph a 1-slot engine
captures (same launches), so single-stream decode keeps its speed.
"""

from __future__ import annotations

import pytest

from tests.cuda.engine_checks import (
    check_a_nan_slot_on_a_poisoned_file,
    check_batch_invariance,
    check_slots_match_numpy,
    gemma3_file,
)
from tests.cuda.one_slot import one_slot

CTX = 160  # > 128: the decode graphs of 1, 2, 4 and 8 attention splits per slot


@pytest.fixture(scope="module", params=["smollm2", "qwen2", "gemma3"])
def model(request, cuda_ctx, tmp_path_factory):
    from runtime.gguf_file import open_gguf
    from tools.make_synthetic_gguf import write_synthetic_model

    family = request.param
    path = tmp_path_factory.mktemp(family) / f"{family}.gguf"
    if family == "gemma3":
        gemma3_file(path, n_layers=2, vocab_size=1500)
    else:
        write_synthetic_model(path, family=family, n_layers=2, vocab_size=1500, seed=5)
    m = open_gguf(path)
    yield m
    m.close()


@pytest.fixture(scope="module")
def engine(model):
    from cuda.engine import CudaEngine

    e = CudaEngine.load(model, max_context=CTX, max_chunk=64, max_batch=64)
    yield e
    e.close()


def test_a_job_gives_the_same_tokens_alone_and_beside_7_or_63_others(engine, model):
    from cuda.forward_rows import buckets

    assert engine.max_batch == 64 and {s for s, _ in engine._graphs} >= {0}  # slot 0's at load
    # several slots take the batched step: a graph per bucket of rows and split level
    assert engine.batched and len(engine._row_graphs) == len(buckets(64)) * 4
    check_batch_invariance(engine, model.config.vocab_size, n_tokens=8)


def test_slots_decoded_together_match_numpy(engine, model):
    from runtime.numpy_engine import NumpyEngine

    check_slots_match_numpy(engine, one_slot(NumpyEngine.load(model, max_context=CTX)))


def test_slot_graphs_are_the_single_slot_graph(engine, model):
    """Every slot's graph has the launches of a 1-slot engine's (no batch overhead per step)."""
    from cuda.engine import CudaEngine

    one = CudaEngine.load(model, max_context=CTX, max_chunk=64)
    try:
        n = {s: g.n_launches for (_, s), g in one._graphs.items()}
        assert all(g.n_launches == n[s] for (_, s), g in engine._graphs.items())
    finally:
        one.close()


def test_a_nan_slot_gets_non_finite_and_its_neighbour_its_own_tokens(cuda_ctx, tmp_path):
    check_a_nan_slot_on_a_poisoned_file(tmp_path, vocab_size=400)
