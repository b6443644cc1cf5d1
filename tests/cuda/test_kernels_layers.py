"""The engine's own kernels on the GPU against numpy: RMSNorm, rotary + KV write, attention
(fused decode, prefill; plain split-K decode of every head size: test_kernels_gemma.py), SwiGLU,
add, residency checksum.

References are runtime.numpy_layers (the reference engine's own functions) on random data, with
sizes that are not multiples of the thread or warp counts. Tolerances: 1e-5 relative for fp32
paths; KV values are compared with numpy's fp16 rounding of the reference (at most one fp16 ulp
apart, since both round the same fp32 value up to its own rounding of the rotation).
"""

from __future__ import annotations

import numpy as np
import pytest

from cuda import residency
from runtime import numpy_layers as nl

RTOL = 1e-5


@pytest.fixture(scope="module")
def gpu(cuda_ctx):
    import pycuda.driver as drv
    import pycuda.gpuarray as ga

    from cuda.ops import Ops

    return drv, ga, drv.Stream(), {64: Ops(64), 128: Ops(128)}


def rel(a, b) -> float:
    return float(np.linalg.norm(np.asarray(a, np.float64) - b) / max(np.linalg.norm(b), 1e-30))


def test_rms_norm(gpu):
    drv, ga, s, ops = gpu
    rng = np.random.default_rng(1)
    x = rng.standard_normal((3, 577)).astype(np.float32)
    w = rng.standard_normal(577).astype(np.float32)
    xd, wd, yd = ga.to_gpu(x), ga.to_gpu(w), ga.empty_like(ga.to_gpu(x))
    ops[64].rms_norm(xd.gpudata, wd.gpudata, yd.gpudata, 3, 577, 1e-5, s)
    s.synchronize()
    assert rel(yd.get(), nl.rms_norm(x, w, 1e-5)) < RTOL


@pytest.mark.parametrize("style", ["norm", "neox"])
@pytest.mark.parametrize("rope_dim", [64, 32])
def test_rope_kv_write(gpu, style, rope_dim):
    drv, ga, s, ops = gpu
    rng = np.random.default_rng(2)
    T, H, KV, D, ctx, pos0 = 5, 6, 2, 64, 21, 7
    qkv = rng.standard_normal((T, (H + 2 * KV) * D)).astype(np.float32)
    cos, sin = nl.rope_tables(ctx, rope_dim, 10000.0)
    kc = ga.to_gpu(np.full((KV, ctx, D), 7.0, np.float16))
    vc = ga.to_gpu(np.full((KV, ctx, D), 7.0, np.float16))
    qd, pos = ga.to_gpu(qkv), ga.to_gpu(np.array([pos0], np.int32))
    ops[64].rope_kv_write(
        qd.gpudata, T, pos.gpudata, ga.to_gpu(cos).gpudata, ga.to_gpu(sin).gpudata, kc.gpudata,
        vc.gpudata, n_heads=H, n_kv=KV, rope_half=rope_dim // 2, max_ctx=ctx,
        neox=style == "neox", stream=s,
    )  # fmt: skip
    s.synchronize()
    q = qkv[:, : H * D].reshape(T, H, D).copy()
    k = qkv[:, H * D : (H + KV) * D].reshape(T, KV, D).copy()
    v = qkv[:, (H + KV) * D :].reshape(T, KV, D)
    nl.apply_rope(q, cos[pos0 : pos0 + T], sin[pos0 : pos0 + T], style)
    nl.apply_rope(k, cos[pos0 : pos0 + T], sin[pos0 : pos0 + T], style)
    assert rel(qd.get()[:, : H * D], q.reshape(T, H * D)) < RTOL
    np.testing.assert_array_equal(qd.get()[:, H * D :], qkv[:, H * D :])  # k, v rows untouched
    kg, vg = kc.get(), vc.get()
    got_k = kg[:, pos0 : pos0 + T].transpose(1, 0, 2).astype(np.float32)
    ref_k = k.astype(np.float16).astype(np.float32)
    np.testing.assert_allclose(got_k, ref_k, rtol=2e-3, atol=1e-3)
    np.testing.assert_array_equal(vg[:, pos0 : pos0 + T].transpose(1, 0, 2), v.astype(np.float16))
    untouched = np.ones(ctx, bool)
    untouched[pos0 : pos0 + T] = False
    assert (kg[:, untouched] == 7.0).all() and (vg[:, untouched] == 7.0).all()


def _attention_case(rng, H, KV, D, ctx, L):
    kc = rng.standard_normal((KV, ctx, D)).astype(np.float16)
    vc = rng.standard_normal((KV, ctx, D)).astype(np.float16)
    return kc, vc


@pytest.mark.parametrize("style", ["norm", "neox"])
@pytest.mark.parametrize("splits", [1, 5])
@pytest.mark.parametrize("pos", [0, 57])
def test_attention_decode_fused_rope(gpu, style, splits, pos):
    """The fused decode step: rope of q and the new k, KV write and attention in one launch."""
    drv, ga, s, ops = gpu
    rng = np.random.default_rng(7 + pos)
    H, KV, D, ctx = 9, 3, 64, 80
    kc, vc = _attention_case(rng, H, KV, D, ctx, pos + 1)
    qkv = rng.standard_normal((1, (H + 2 * KV) * D)).astype(np.float32)
    cos, sin = nl.rope_tables(ctx, D, 10000.0)
    kd, vd = ga.to_gpu(kc), ga.to_gpu(vc)
    out = ga.to_gpu(np.full(H * D, np.nan, np.float32))
    ops[64].attn_decode_rope(
        ga.to_gpu(qkv).gpudata, kd.gpudata, vd.gpudata, out.gpudata,
        ga.to_gpu(np.array([pos], np.int32)).gpudata, ga.zeros(H * splits * (D + 2), np.float32).gpudata,
        ga.zeros(H, np.uint32).gpudata, ga.to_gpu(cos).gpudata, ga.to_gpu(sin).gpudata,
        n_heads=H, n_kv=KV, max_ctx=ctx, rope_half=D // 2, neox=style == "neox",
        n_splits=splits, stream=s,
    )  # fmt: skip
    s.synchronize()
    q = qkv[:, : H * D].reshape(1, H, D).copy()
    k = qkv[:, H * D : (H + KV) * D].reshape(1, KV, D).copy()
    v = qkv[:, (H + KV) * D :].reshape(1, KV, D)
    nl.apply_rope(q, cos[pos : pos + 1], sin[pos : pos + 1], style)
    nl.apply_rope(k, cos[pos : pos + 1], sin[pos : pos + 1], style)
    kc[:, pos], vc[:, pos] = k[0].astype(np.float16), v[0].astype(np.float16)
    np.testing.assert_allclose(
        kd.get()[:, pos].astype(np.float32), kc[:, pos], rtol=2e-3, atol=1e-3
    )
    np.testing.assert_array_equal(vd.get()[:, pos], vc[:, pos])
    ref = nl.attention(q, kd.get().astype(np.float32), vc.astype(np.float32), pos, D**-0.5)
    assert rel(out.get(), ref.reshape(-1)) < RTOL


@pytest.mark.parametrize("pos0,T", [(0, 13), (9, 13), (40, 1)])
def test_attention_prefill(gpu, pos0, T):
    drv, ga, s, ops = gpu
    rng = np.random.default_rng(4)
    H, KV, D, ctx = 6, 3, 64, 60
    kc, vc = _attention_case(rng, H, KV, D, ctx, pos0 + T)
    qkv = rng.standard_normal((T, (H + 2 * KV) * D)).astype(np.float32)
    out = ga.to_gpu(np.full((T, H * D), np.nan, np.float32))
    pos = ga.to_gpu(np.array([pos0], np.int32))
    ops[64].attn_prefill(
        ga.to_gpu(qkv).gpudata, ga.to_gpu(kc).gpudata, ga.to_gpu(vc).gpudata, out.gpudata,
        pos.gpudata, T, n_heads=H, n_kv=KV, max_ctx=ctx, stream=s,
    )  # fmt: skip
    s.synchronize()
    q = qkv[:, : H * D].reshape(T, H, D)
    ref = nl.attention(q, kc.astype(np.float32), vc.astype(np.float32), pos0, D**-0.5)
    assert rel(out.get(), ref) < RTOL


def test_swiglu_and_add(gpu):
    drv, ga, s, ops = gpu
    rng = np.random.default_rng(5)
    n, d_ff = 3, 1537
    gu = (rng.standard_normal((n, 2 * d_ff)) * 30).astype(np.float32)  # reaches exp overflow
    h = ga.empty((n, d_ff), np.float32)
    ops[64].glu(ga.to_gpu(gu).gpudata, h.gpudata, d_ff, n, s)
    x = rng.standard_normal(1001).astype(np.float32)
    y = rng.standard_normal(1001).astype(np.float32)
    xd = ga.to_gpu(x)
    ops[64].add(xd.gpudata, ga.to_gpu(y).gpudata, 1001, s)
    s.synchronize()
    assert rel(h.get(), nl.swiglu(gu, d_ff)) < RTOL
    np.testing.assert_array_equal(xd.get(), x + y)


def test_checksum_matches_host(gpu):
    drv, ga, s, ops = gpu
    rng = np.random.default_rng(6)
    data = rng.integers(0, 256, 4 * 100_003, dtype=np.uint8)
    out = ga.zeros(1, np.uint64)
    ops[64].checksum(ga.to_gpu(data).gpudata, data.size // 4, out.gpudata, s)
    s.synchronize()
    assert int(out.get()[0]) == residency.host_checksum(data)
    data[12345] ^= 1  # one flipped bit changes it
    assert int(out.get()[0]) != residency.host_checksum(data)
