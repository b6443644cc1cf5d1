"""The engine's kernels with what gemma3 (and qwen2's shapes) need, on the GPU against numpy
(decode attention of every head size lives here: window 0 is the plain causal case):

- rope + KV write with per-head RMSNorm of q and k (head_dim 256, NEOX, the layer's own table);
- attention with a sliding window (a key at position p is visible from a query at position t
  iff 0 <= t - p < window; 0 = full), a configurable scale, head_dim 256 with GQA 4:1 over one
  KV head (gemma3) and head_dim 64 with GQA 7:1 (qwen2): decode (split-K, every split count),
  the fused decode step (norm + rope + KV write + attention) and prefill;
- the post-norm residual add x += rmsnorm(y) * w (with the next norm fused), the GELU-tanh GLU.

References: float64 numpy written here (windowed attention, per-head norm) on top of
runtime.numpy_layers' rope. Tolerances as test_kernels_layers.py: 1e-5 relative for fp32 paths;
KV values within fp16 rounding of the reference.
"""

from __future__ import annotations

import numpy as np
import pytest

from runtime import numpy_layers as nl
from tests.cuda.checks import attention_ref, glu_ref, rel

RTOL = 1e-5
EPS = 1e-6


@pytest.fixture(scope="module")
def gpu(cuda_ctx):
    import pycuda.driver as drv
    import pycuda.gpuarray as ga

    from cuda.ops import Ops

    return drv, ga, drv.Stream(), {64: Ops(64), 128: Ops(128), 256: Ops(256)}


#: (query heads, kv heads, head_dim): gemma3-270m, qwen2.5-0.5b, and the common 128-wide head
SHAPES = {"gemma3": (4, 1, 256), "qwen2": (14, 2, 64), "d128": (6, 2, 128)}


def head_norm(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Per-head RMSNorm of x (..., D) with weights w (D,), float64."""
    x = x.astype(np.float64)
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + EPS) * w


def _split_qkv(qkv, T, H, KV, D):
    q = qkv[:, : H * D].reshape(T, H, D).copy()
    k = qkv[:, H * D : (H + KV) * D].reshape(T, KV, D).copy()
    v = qkv[:, (H + KV) * D :].reshape(T, KV, D).copy()
    return q, k, v


@pytest.mark.parametrize("family", sorted(SHAPES))
@pytest.mark.parametrize("with_norm", [False, True], ids=["plain", "qk-norm"])
def test_rope_kv_write_with_per_head_norm(gpu, family, with_norm):
    drv, ga, s, ops = gpu
    H, KV, D = SHAPES[family]
    rng = np.random.default_rng(len(family) + with_norm)
    T, ctx, pos0 = 7, 40, 11
    qkv = (rng.standard_normal((T, (H + 2 * KV) * D)) * 3).astype(np.float32)
    qn = rng.uniform(0.5, 1.5, D).astype(np.float32)
    kn = rng.uniform(0.5, 1.5, D).astype(np.float32)
    cos, sin = nl.rope_tables(ctx, D, 10000.0)  # a sliding layer's base: the table is an argument
    kc = ga.to_gpu(np.full((KV, ctx, D), 7.0, np.float16))
    vc = ga.to_gpu(np.full((KV, ctx, D), 7.0, np.float16))
    qd = ga.to_gpu(qkv)
    norms = {}
    if with_norm:
        norms = dict(q_norm=ga.to_gpu(qn).gpudata, k_norm=ga.to_gpu(kn).gpudata, norm_eps=EPS)
    ops[D].rope_kv_write(
        qd.gpudata, T, ga.to_gpu(np.array([pos0], np.int32)).gpudata, ga.to_gpu(cos).gpudata,
        ga.to_gpu(sin).gpudata, kc.gpudata, vc.gpudata, n_heads=H, n_kv=KV, rope_half=D // 2,
        max_ctx=ctx, neox=True, stream=s, **norms,
    )  # fmt: skip
    s.synchronize()
    q, k, v = _split_qkv(qkv, T, H, KV, D)
    if with_norm:
        q, k = head_norm(q, qn).astype(np.float32), head_norm(k, kn).astype(np.float32)
    nl.apply_rope(q, cos[pos0 : pos0 + T], sin[pos0 : pos0 + T], "neox")
    nl.apply_rope(k, cos[pos0 : pos0 + T], sin[pos0 : pos0 + T], "neox")
    assert rel(qd.get()[:, : H * D], q.reshape(T, H * D)) < RTOL
    np.testing.assert_array_equal(qd.get()[:, H * D :], qkv[:, H * D :])  # k, v rows untouched
    kg, vg = kc.get(), vc.get()
    got_k = kg[:, pos0 : pos0 + T].transpose(1, 0, 2).astype(np.float32)
    np.testing.assert_allclose(got_k, k.astype(np.float16).astype(np.float32), rtol=2e-3, atol=2e-3)
    np.testing.assert_array_equal(vg[:, pos0 : pos0 + T].transpose(1, 0, 2), v.astype(np.float16))
    untouched = np.ones(ctx, bool)
    untouched[pos0 : pos0 + T] = False
    assert (kg[:, untouched] == 7.0).all() and (vg[:, untouched] == 7.0).all()


def _cache(rng, KV, ctx, D):
    kc = rng.standard_normal((KV, ctx, D)).astype(np.float16)
    vc = rng.standard_normal((KV, ctx, D)).astype(np.float16)
    return kc, vc


@pytest.mark.parametrize("family", sorted(SHAPES))
@pytest.mark.parametrize("splits", [1, 5, 16, 32])
@pytest.mark.parametrize(
    ("L", "window"), [(1, 0), (37, 0), (300, 0), (1, 16), (37, 16), (300, 16), (300, 512)]
)
def test_attention_decode_with_window(gpu, family, splits, L, window):
    drv, ga, s, ops = gpu
    H, KV, D = SHAPES[family]
    rng = np.random.default_rng([L, window, splits])
    ctx, scale = 301, 0.07  # not 1/sqrt(D): the scale is the caller's
    kc, vc = _cache(rng, KV, ctx, D)
    qkv = (rng.standard_normal((1, (H + 2 * KV) * D)) * 2).astype(np.float32)
    out = ga.to_gpu(np.full(H * D, np.nan, np.float32))
    part = ga.zeros(H * splits * (D + 2), np.float32)
    counters = ga.zeros(H, np.uint32)
    pos = ga.to_gpu(np.array([L - 1], np.int32))
    kd, vd, qd = ga.to_gpu(kc), ga.to_gpu(vc), ga.to_gpu(qkv)
    for _ in range(2):  # twice: the split counters must have reset themselves
        ops[D].attn_decode(
            qd.gpudata, kd.gpudata, vd.gpudata, out.gpudata, pos.gpudata, part.gpudata,
            counters.gpudata, n_heads=H, n_kv=KV, max_ctx=ctx, n_splits=splits, stream=s,
            scale=scale, window=window,
        )  # fmt: skip
        s.synchronize()
        q = qkv[:, : H * D].reshape(1, H, D)
        ref = attention_ref(q, kc, vc, L - 1, scale, window)
        assert rel(out.get(), ref.reshape(-1)) < RTOL
        assert (counters.get() == 0).all()


@pytest.mark.parametrize("splits", [1, 5])
@pytest.mark.parametrize(("pos", "window"), [(0, 16), (57, 16), (57, 0)])
def test_fused_decode_step_with_qk_norm_and_window(gpu, splits, pos, window):
    """gemma3's decode attention in one launch: per-head RMSNorm of q and the new k, NEOX rope
    at the layer's table, KV write, windowed attention with scale 1/sqrt(256)."""
    drv, ga, s, ops = gpu
    H, KV, D = SHAPES["gemma3"]
    rng = np.random.default_rng([pos, window, splits])
    ctx = 80
    kc, vc = _cache(rng, KV, ctx, D)
    qkv = (rng.standard_normal((1, (H + 2 * KV) * D)) * 3).astype(np.float32)
    qn = rng.uniform(0.5, 1.5, D).astype(np.float32)
    kn = rng.uniform(0.5, 1.5, D).astype(np.float32)
    cos, sin = nl.rope_tables(ctx, D, 1e6)  # a global layer's base
    kd, vd = ga.to_gpu(kc), ga.to_gpu(vc)
    out = ga.to_gpu(np.full(H * D, np.nan, np.float32))
    ops[D].attn_decode_rope(
        ga.to_gpu(qkv).gpudata, kd.gpudata, vd.gpudata, out.gpudata,
        ga.to_gpu(np.array([pos], np.int32)).gpudata,
        ga.zeros(H * splits * (D + 2), np.float32).gpudata, ga.zeros(H, np.uint32).gpudata,
        ga.to_gpu(cos).gpudata, ga.to_gpu(sin).gpudata, n_heads=H, n_kv=KV, max_ctx=ctx,
        rope_half=D // 2, neox=True, n_splits=splits, stream=s, q_norm=ga.to_gpu(qn).gpudata,
        k_norm=ga.to_gpu(kn).gpudata, norm_eps=EPS, scale=D**-0.5, window=window,
    )  # fmt: skip
    s.synchronize()
    q, k, v = _split_qkv(qkv, 1, H, KV, D)
    q, k = head_norm(q, qn).astype(np.float32), head_norm(k, kn).astype(np.float32)
    nl.apply_rope(q, cos[pos : pos + 1], sin[pos : pos + 1], "neox")
    nl.apply_rope(k, cos[pos : pos + 1], sin[pos : pos + 1], "neox")
    got_k = kd.get()[:, pos].astype(np.float32)
    np.testing.assert_allclose(got_k, k[0].astype(np.float16), rtol=2e-3, atol=2e-3)
    np.testing.assert_array_equal(vd.get()[:, pos], v[0].astype(np.float16))
    kc[:, pos], vc[:, pos] = kd.get()[:, pos], v[0].astype(np.float16)  # as the kernel stored them
    ref = attention_ref(q, kc, vc, pos, D**-0.5, window)
    assert rel(out.get(), ref.reshape(-1)) < RTOL


@pytest.mark.parametrize("family", sorted(SHAPES))
@pytest.mark.parametrize(
    ("pos0", "T", "window"), [(0, 13, 0), (9, 13, 0), (0, 40, 5), (9, 13, 5), (40, 1, 7)]
)
def test_attention_prefill_with_window(gpu, family, pos0, T, window):
    drv, ga, s, ops = gpu
    H, KV, D = SHAPES[family]
    rng = np.random.default_rng([pos0, T, window])
    ctx, scale = 60, 0.09
    kc, vc = _cache(rng, KV, ctx, D)
    qkv = rng.standard_normal((T, (H + 2 * KV) * D)).astype(np.float32)
    out = ga.to_gpu(np.full((T, H * D), np.nan, np.float32))
    ops[D].attn_prefill(
        ga.to_gpu(qkv).gpudata, ga.to_gpu(kc).gpudata, ga.to_gpu(vc).gpudata, out.gpudata,
        ga.to_gpu(np.array([pos0], np.int32)).gpudata, T, n_heads=H, n_kv=KV, max_ctx=ctx,
        stream=s, scale=scale, window=window,
    )  # fmt: skip
    s.synchronize()
    q = qkv[:, : H * D].reshape(T, H, D)
    assert rel(out.get(), attention_ref(q, kc, vc, pos0, scale, window)) < RTOL


@pytest.mark.parametrize("next_norm", ["none", "separate", "in-place"])
def test_post_norm_residual_add(gpu, next_norm):
    """x += rmsnorm(y) * w_post, then (optionally) xn = rmsnorm(x) * w_next, xn may be y."""
    drv, ga, s, ops = gpu
    rng = np.random.default_rng(len(next_norm))
    n, d = 5, 640
    x = rng.standard_normal((n, d)).astype(np.float32)
    y = (rng.standard_normal((n, d)) * 4).astype(np.float32)
    wp = rng.uniform(0.5, 1.5, d).astype(np.float32)
    wn = rng.uniform(0.5, 1.5, d).astype(np.float32)
    xd, yd = ga.to_gpu(x), ga.to_gpu(y)
    xn = {"none": None, "separate": ga.empty((n, d), np.float32), "in-place": yd}[next_norm]
    ops[64].add_rms_norm(
        yd.gpudata, ga.to_gpu(wp).gpudata, xd.gpudata, n, d, EPS, s,
        w_next=None if xn is None else ga.to_gpu(wn).gpudata,
        xn=None if xn is None else xn.gpudata,
    )  # fmt: skip
    s.synchronize()
    want_x = x + nl.rms_norm(y, wp, EPS)
    assert rel(xd.get(), want_x) < RTOL
    if xn is not None:
        assert rel(xn.get(), nl.rms_norm(want_x, wn, EPS)) < RTOL
    else:
        np.testing.assert_array_equal(yd.get(), y)


def test_geglu(gpu):
    drv, ga, s, ops = gpu
    rng = np.random.default_rng(9)
    n, d_ff = 3, 2051
    gu = (rng.standard_normal((n, 2 * d_ff)) * 6).astype(np.float32)
    h = ga.empty((n, d_ff), np.float32)
    ops[64].glu(ga.to_gpu(gu).gpudata, h.gpudata, d_ff, n, s, act="gelu_tanh")
    s.synchronize()
    assert rel(h.get(), glu_ref(gu[:, :d_ff], gu[:, d_ff:], "gelu_tanh")) < RTOL
    with pytest.raises(ValueError, match="unknown activation"):
        ops[64].glu(0, 0, 1, 1, s, act="relu")
