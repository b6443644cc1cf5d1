"""The tensor-core prefill attention (attn_prefill_tc.cu) on the GPU against float64 numpy.

Shapes: qwen2 (14 heads, 2 KV heads, head_dim 64, GQA 7:1), SmolLM2 (9/3, 64) and a 128-wide
head; chunks that are not multiples of the 64-query tile, chunks that start deep in the cache,
a sliding window. Tolerance: relative L2 3e-3 (queries and P rounded to fp16, as the cache's
keys and values are). Batch invariance: a query's output is bitwise the same whether its chunk
holds 300 queries or 200 (the key tiles sit at absolute positions).
"""

from __future__ import annotations

import numpy as np
import pytest

from tests.cuda.checks import attention_ref, rel

TOL = 3e-3
SHAPES = {"qwen2": (14, 2, 64), "smollm2": (9, 3, 64), "d128": (8, 2, 128)}


@pytest.fixture(scope="module")
def gpu(cuda_ctx):
    import pycuda.driver as drv
    import pycuda.gpuarray as ga

    from cuda.ops import Ops

    return drv, ga, drv.Stream(), {64: Ops(64), 128: Ops(128)}


def _run(gpu, kernel, qkv, kc, vc, pos0, H, KV, D, window, scale):
    drv, ga, s, ops = gpu
    T = qkv.shape[0]
    assert kernel == "simt" or ops[D]._attn_tc is not None  # no silent fallback here
    out = ga.to_gpu(np.full((T, H * D), np.nan, np.float32))
    ops[D].attn_prefill(
        ga.to_gpu(qkv).gpudata, ga.to_gpu(kc).gpudata, ga.to_gpu(vc).gpudata, out.gpudata,
        ga.to_gpu(np.array([pos0], np.int32)).gpudata, T, n_heads=H, n_kv=KV,
        max_ctx=kc.shape[1], stream=s, scale=scale, window=window, kernel=kernel,
    )  # fmt: skip
    s.synchronize()
    return out.get()


def _case(rng, H, KV, D, ctx, T, garbage_tail: int):
    kc = rng.standard_normal((KV, ctx, D)).astype(np.float16)
    vc = rng.standard_normal((KV, ctx, D)).astype(np.float16)
    if garbage_tail:  # past the chunk the cache holds anything: NaN must not leak in
        kc[:, -garbage_tail:] = np.nan
        vc[:, -garbage_tail:] = np.nan
    qkv = (rng.standard_normal((T, (H + 2 * KV) * D)) * 2).astype(np.float32)
    return qkv, kc, vc


@pytest.mark.parametrize("shape", sorted(SHAPES))
@pytest.mark.parametrize(
    ("pos0", "T", "window"), [(0, 1, 0), (0, 64, 0), (0, 130, 0), (37, 100, 0), (300, 7, 0),
                              (0, 130, 40), (77, 90, 33)],
)  # fmt: skip
def test_tensor_core_prefill_attention(gpu, shape, pos0, T, window):
    H, KV, D = SHAPES[shape]
    rng = np.random.default_rng([pos0, T, window, D])
    ctx = pos0 + T + 40
    qkv, kc, vc = _case(rng, H, KV, D, ctx, T, garbage_tail=40)
    scale = D**-0.5
    got = _run(gpu, "tc", qkv, kc, vc, pos0, H, KV, D, window, scale)
    q = qkv[:, : H * D].reshape(T, H, D)
    ref = attention_ref(q, kc, vc, pos0, scale, window)
    assert np.isfinite(got).all()
    assert rel(got, ref) < TOL


@pytest.mark.parametrize("window", [0, 50])
def test_tensor_core_prefill_attention_is_batch_invariant(gpu, window):
    H, KV, D = SHAPES["qwen2"]
    rng = np.random.default_rng(window)
    qkv, kc, vc = _case(rng, H, KV, D, 340, 300, garbage_tail=0)
    whole = _run(gpu, "tc", qkv, kc, vc, 0, H, KV, D, window, D**-0.5)
    tail = _run(gpu, "tc", qkv[100:], kc, vc, 100, H, KV, D, window, D**-0.5)
    np.testing.assert_array_equal(tail, whole[100:])


def test_tensor_core_and_simt_prefill_agree(gpu):
    H, KV, D = SHAPES["qwen2"]
    rng = np.random.default_rng(3)
    qkv, kc, vc = _case(rng, H, KV, D, 600, 512, garbage_tail=20)
    tc = _run(gpu, "tc", qkv, kc, vc, 60, H, KV, D, 0, D**-0.5)
    simt = _run(gpu, "simt", qkv, kc, vc, 60, H, KV, D, 0, D**-0.5)
    assert rel(tc, simt) < TOL
