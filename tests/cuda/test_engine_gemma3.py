"""CudaEngine on a synthetic gemma3 model (Gemma-3-270M's exact shapes and type mix, 7 layers,
random weights, a 48-token sliding window) against the numpy reference engine.

What it pins down: the gemma3 block of cuda/models/gemma3.py on the real kernels: embeddings
scaled by sqrt(640), per-head q/k RMSNorm, two rotary tables (base 10,000 on the sliding layers
0-4 and 6, rope.freq_base on layer 5), the window (48: not a multiple of the 32-key decode split,
crossed by the prompt, by prefill chunks and by decode), scores scaled by 1/sqrt(256), the
post-norm residual adds (prefill: fused with the next projection's input norm), GELU-tanh, q_dim
1024 != d_model 640, the tied head. Logit tolerance 3e-3 relative L2 against the fp32 engine,
as the other synthetic engine tests (fp16 KV cache, fp16 tensor-core prefill products; the same
sequence on the simulated GPU measures 1.4e-3, tests/cuda/test_engine_sim.py).
"""

from __future__ import annotations

import numpy as np
import pytest

from runtime.sampling import SamplingParams
from tests.cuda.engine_checks import (
    SYNTHETIC_TOL,
    compare_with_numpy,
    gemma3_file,
    rel,
    whole_and_split,
)
from tests.cuda.one_slot import load_one, one_slot

CTX = 1024
LAYERS = 7
WINDOW = 48


@pytest.fixture(scope="module")
def model(cuda_ctx, tmp_path_factory):
    from runtime.gguf_file import open_gguf

    path = gemma3_file(
        tmp_path_factory.mktemp("g") / "gemma3.gguf", n_layers=LAYERS, window=WINDOW,
        vocab_size=3000,
    )  # fmt: skip
    m = open_gguf(path)
    yield m
    m.close()


@pytest.fixture(scope="module")
def engines(model):

    out = {
        "graph": load_one(model, max_context=CTX),
        "fused_eager": load_one(model, max_context=CTX, use_graph=False),
        "eager": load_one(model, max_context=CTX, use_graph=False, fuse=False),
    }
    yield out
    for e in out.values():
        e.close()


@pytest.fixture(scope="module")
def reference(model):
    from runtime.numpy_engine import NumpyEngine

    return one_slot(NumpyEngine.load(model, max_context=CTX))


def test_layout_and_launches(engines, model):
    c = model.config
    assert c.layer_window == (WINDOW,) * 5 + (0, WINDOW) and c.rope_bases == (10000.0, 1e6)
    graph = engines["graph"]
    # q|k|v: v is Q8_0 in layers 0, 1, 4 (three segments), all Q5_0 elsewhere (one allocation)
    assert [len(lw.qkv) for lw in graph.weights.layers] == [3, 3, 1, 1, 3, 1, 1]
    assert all(lw.q_norm and lw.k_norm and lw.post_attn_norm and lw.post_ffn_norm
               for lw in graph.weights.layers)  # fmt: skip
    assert graph.weights.output is graph.weights.token_embd  # tied head
    # embedding, 7 launches per layer (normed q|k|v, fused attention, o, post-norm add, normed
    # gate|up + GELU, down, post-norm add), head, argmax
    assert {g.n_launches for g in graph._graphs.values()} == {1 + 7 * LAYERS + 2}
    assert graph.fwd.fuse_rope and not engines["eager"].fwd.fuse_rope


def test_prefill_and_decode_match_numpy_engine(engines, model, reference):
    """600 prompt tokens (512 + 88: two chunks, the window crossed in both) then 40 steps."""
    rng = np.random.default_rng(1)
    v = model.config.vocab_size
    worst = compare_with_numpy(engines, reference, rng.integers(0, v, 600), rng.integers(0, v, 40))
    print(f"gemma3 synthetic, long prompt: worst relative logit error vs numpy {worst}")
    assert max(worst.values()) < SYNTHETIC_TOL


def test_short_sequence_through_every_split_graph(engines, model, reference):
    """From position 3 to 203: the graphs of 1 to 8 splits take turns while the window fills
    and then slides (sliding layers leave the splits before their window empty); the step's own
    greedy choice is the argmax of its logits."""
    rng = np.random.default_rng(2)
    graph = engines["graph"]
    v = model.config.vocab_size
    subset = {"graph": graph, "fused_eager": engines["fused_eager"]}
    worst = compare_with_numpy(subset, reference, [3, 1, 4], rng.integers(0, v, 200))
    print(f"gemma3 synthetic, short prompt: worst relative logit error vs numpy {worst}")
    assert max(worst.values()) < SYNTHETIC_TOL
    greedy = SamplingParams(temperature=0.0)
    for i in range(5):
        graph.step(int(rng.integers(0, v)))
        assert graph.sample(greedy, [], i) == int(np.argmax(graph.logits()))


def test_prefill_then_decode_is_one_pass(engines, model):
    prompt = np.random.default_rng(3).integers(0, model.config.vocab_size, 90)
    whole, split = whole_and_split(engines["graph"], prompt, 60, decode_rest=True)
    err = rel(split, whole)
    print(f"gemma3 synthetic: prefill(60) + 30 steps vs prefill(90): {err:.2e}")
    assert err < SYNTHETIC_TOL  # decode's products are fp32, prefill's fp16-rounded


def test_prefill_is_batch_invariant(engines, model):
    """prefill(300) and prefill(100) + prefill(200) give bitwise the same logits: every kernel
    reduces each row in the same order whatever the number of rows (test_engine_qwen2.py)."""
    prompt = np.random.default_rng(4).integers(0, model.config.vocab_size, 300)
    whole, split = whole_and_split(engines["graph"], prompt, 100, decode_rest=False)
    np.testing.assert_array_equal(split, whole)


def test_memory_residency_and_pdl(engines, model):
    """The load allocates vram_needed (the sampler workspace too, allocated at load since the
    slots); the residency check passes and covers the rotary tables; the graphs without PDL
    compute bitwise the same."""
    from cuda.engine import vram_needed

    graph = engines["graph"]
    graph.reset()
    needed = vram_needed(model, CTX)
    assert graph.memory_bytes() == needed
    report = graph.check_residency()
    assert report.ok, report.detail
    assert {"rope.0.cos", "rope.1.sin", "blk.6.attn_k_norm"} <= set(graph._checksums)
    plain = load_one(model, max_context=CTX, pdl=False)
    try:
        prompt = [int(t) for t in np.random.default_rng(5).integers(0, model.config.vocab_size, 70)]
        for e in (graph, plain):
            e.reset()
            e.prefill(prompt)
        for t in range(60):
            for e in (graph, plain):
                e.step(t)
            np.testing.assert_array_equal(graph.logits(), plain.logits())
    finally:
        plain.close()
