"""gpt-oss's kernels on the GPU against numpy: attention with sinks (decode, fused decode with
YaRN rope, prefill), top-k routing, the experts' gate|up (clamped SwiGLU) and down products for
every weight type, a whole MoE FFN of the reference fixture against the numpy engine's, and
MXFP4 products at gpt-oss-20b's shapes.

References are float64 numpy written here or the numpy engine's own functions
(runtime.models.gpt_oss: route, moe_ffn). Tolerances as test_quant_kernels.py: errors relative
to the size of the terms (sum |w x|), 1e-5 for these fp32 kernels. MXFP4 itself is checked like
every other type by test_quant_kernels.py (TYPES includes it) and, on the host, bit for bit by
test_nvcc_compile.py.
"""

from __future__ import annotations

import numpy as np
import pytest
from gguf import GGMLQuantizationType as Q

from runtime import numpy_layers as nl
from runtime.model_config import MixtureOfExperts, YarnScaling
from runtime.models import gpt_oss
from runtime.quants import dequantize
from tests.cuda.checks import EXACT_TOL, assert_close, attention_ref, rel
from tests.cuda.ggml_random import TYPES, block_cols, random_weights

RTOL = 1e-5
ALPHA, LIMIT = gpt_oss.SWIGLU_ALPHA, gpt_oss.SWIGLU_LIMIT
#: (query heads, kv heads, head_dim): the reference fixture and gpt-oss-20b
SHAPES = {"tiny": (4, 2, 64), "20b": (64, 8, 64)}
YARN = YarnScaling(32.0, 4096, 32.0, 1.0, truncate=False)


@pytest.fixture(scope="module")
def ops(cuda_ctx):
    from cuda.ops import Ops

    return Ops(64)


@pytest.fixture(scope="module")
def moe(cuda_ctx):
    from cuda.moe_ops import MoeKernels

    return MoeKernels()


def _sinks(rng, n_heads: int) -> np.ndarray:
    """Sink logits of the size real ones have, one far above every score (the head's output
    ~0) and one far below (no effect)."""
    s = rng.normal(0.0, 2.0, n_heads).astype(np.float32)
    s[0], s[1] = 40.0, -40.0
    return s


def _check_heads(got: np.ndarray, ref: np.ndarray, n_heads: int) -> None:
    got, ref = got.reshape(-1, n_heads, 64), ref.reshape(-1, n_heads, 64)
    assert np.abs(got[:, 0]).max() < 1e-9  # the dominant sink takes all the probability
    assert rel(got[:, 1:], ref[:, 1:]) < RTOL


# ---------------------------------------------------------------------------- attention sinks


@pytest.mark.parametrize("shape", sorted(SHAPES))
@pytest.mark.parametrize("splits", [1, 5])
@pytest.mark.parametrize(("L", "window"), [(1, 0), (37, 0), (300, 0), (300, 128), (37, 4)])
def test_attention_decode_with_sinks(gpu, ops, shape, splits, L, window):
    H, KV, D = SHAPES[shape]
    rng = np.random.default_rng([L, window, splits, H])
    ctx, scale = 301, D**-0.5
    kc = rng.standard_normal((KV, ctx, D)).astype(np.float16)
    vc = rng.standard_normal((KV, ctx, D)).astype(np.float16)
    qkv = (rng.standard_normal((1, (H + 2 * KV) * D)) * 2).astype(np.float32)
    sinks = _sinks(rng, H)
    out = gpu.out(H * D)
    counters = gpu.put(np.zeros(H, np.uint32))
    for _ in range(2):  # twice: the split counters reset themselves
        ops.attn_decode(
            gpu.put(qkv).gpudata, gpu.put(kc).gpudata, gpu.put(vc).gpudata, out.gpudata,
            gpu.put(np.array([L - 1], np.int32)).gpudata,
            gpu.put(np.zeros(H * splits * (D + 2), np.float32)).gpudata, counters.gpudata,
            n_heads=H, n_kv=KV, max_ctx=ctx, n_splits=splits, stream=gpu.stream, scale=scale,
            window=window, sinks=gpu.put(sinks).gpudata,
        )  # fmt: skip
        got = gpu.get(out, (H * D,))
        ref = attention_ref(qkv[:, : H * D].reshape(1, H, D), kc, vc, L - 1, scale, window, sinks)
        _check_heads(got, ref, H)
        assert (counters.get() == 0).all()


@pytest.mark.parametrize("splits", [1, 5])
@pytest.mark.parametrize(("pos", "window"), [(0, 4), (57, 4), (57, 0), (200, 128)])
def test_fused_decode_step_with_yarn_rope_and_sinks(gpu, ops, splits, pos, window):
    """gpt-oss's decode attention in one launch: NEOX rope from the YaRN tables (cos and sin
    scaled by the attention factor), KV write, windowed attention with sinks."""
    H, KV, D = SHAPES["20b"]
    rng = np.random.default_rng([pos, window, splits])
    ctx = 210
    kc = rng.standard_normal((KV, ctx, D)).astype(np.float16)
    vc = rng.standard_normal((KV, ctx, D)).astype(np.float16)
    qkv = (rng.standard_normal((1, (H + 2 * KV) * D)) * 2).astype(np.float32)
    cos, sin = nl.rope_tables(ctx, D, 150000.0, YARN)
    sinks = _sinks(rng, H)
    kd, vd, out = gpu.put(kc), gpu.put(vc), gpu.out(H * D)
    ops.attn_decode_rope(
        gpu.put(qkv).gpudata, kd.gpudata, vd.gpudata, out.gpudata,
        gpu.put(np.array([pos], np.int32)).gpudata,
        gpu.put(np.zeros(H * splits * (D + 2), np.float32)).gpudata,
        gpu.put(np.zeros(H, np.uint32)).gpudata, gpu.put(cos).gpudata, gpu.put(sin).gpudata,
        n_heads=H, n_kv=KV, max_ctx=ctx, rope_half=D // 2, neox=True, n_splits=splits,
        stream=gpu.stream, scale=D**-0.5, window=window, sinks=gpu.put(sinks).gpudata,
    )  # fmt: skip
    got = gpu.get(out, (H * D,))
    q = qkv[:, : H * D].reshape(1, H, D).copy()
    k = qkv[:, H * D : (H + KV) * D].reshape(1, KV, D).copy()
    v = qkv[:, (H + KV) * D :].reshape(1, KV, D)
    nl.apply_rope(q, cos[pos : pos + 1], sin[pos : pos + 1], "neox")
    nl.apply_rope(k, cos[pos : pos + 1], sin[pos : pos + 1], "neox")
    stored_k = kd.get()[:, pos]
    np.testing.assert_allclose(stored_k.astype(np.float32), k[0], rtol=2e-3, atol=2e-3)
    kc[:, pos], vc[:, pos] = stored_k, v[0].astype(np.float16)  # as the kernel stored them
    _check_heads(got, attention_ref(q, kc, vc, pos, D**-0.5, window, sinks), H)


@pytest.mark.parametrize("kernel", ["simt", "tc"])
@pytest.mark.parametrize(("pos0", "T", "window"), [(0, 13, 0), (9, 70, 4), (40, 1, 128)])
def test_attention_prefill_with_sinks(gpu, ops, kernel, pos0, T, window):
    H, KV, D = SHAPES["20b"]
    rng = np.random.default_rng([pos0, T, window])
    ctx = 120
    kc = rng.standard_normal((KV, ctx, D)).astype(np.float16)
    vc = rng.standard_normal((KV, ctx, D)).astype(np.float16)
    qkv = rng.standard_normal((T, (H + 2 * KV) * D)).astype(np.float32)
    sinks = _sinks(rng, H)
    out = gpu.out(T * H * D)
    ops.attn_prefill(
        gpu.put(qkv).gpudata, gpu.put(kc).gpudata, gpu.put(vc).gpudata, out.gpudata,
        gpu.put(np.array([pos0], np.int32)).gpudata, T, n_heads=H, n_kv=KV, max_ctx=ctx,
        stream=gpu.stream, scale=D**-0.5, window=window, sinks=gpu.put(sinks).gpudata,
        kernel=kernel,
    )  # fmt: skip
    got = gpu.get(out, (T, H * D))
    ref = attention_ref(qkv[:, : H * D].reshape(T, H, D), kc, vc, pos0, D**-0.5, window, sinks)
    if kernel == "simt":
        _check_heads(got, ref, H)
    else:  # tensor cores: q, P rounded to fp16 (as test_attention_prefill_tc.py)
        g, r = got.reshape(T, H, D), ref.reshape(T, H, D)
        assert np.abs(g[:, 0]).max() < 1e-6 and rel(g[:, 1:], r[:, 1:]) < 3e-3


# ---------------------------------------------------------------------------- routing


@pytest.mark.parametrize(("n_experts", "k"), [(8, 4), (32, 4), (128, 4), (256, 8), (5, 5), (33, 1)])
def test_topk_routing_matches_the_numpy_router(gpu, moe, n_experts, k):
    rng = np.random.default_rng([n_experts, k])
    T = 6
    logits = rng.standard_normal((T, n_experts)).astype(np.float32)
    logits[1] = np.round(logits[1] * 2) / 2  # ties: the lower index goes first
    logits[2, : n_experts // 2] = -np.inf
    logits[3, 1] = np.nan  # a broken model: counted as -inf, ids stay valid
    ids = gpu.put(np.full(T * k, -1, np.int32))
    weights = gpu.out(T * k)
    moe.topk(gpu.put(logits).gpudata, T, n_experts, k, ids.gpudata, weights.gpudata, gpu.stream)
    got_w = gpu.get(weights, (T, k))
    want_ids, want_w = gpt_oss.route(np.where(np.isnan(logits), -np.inf, logits), k)
    np.testing.assert_array_equal(ids.get().reshape(T, k), want_ids)
    np.testing.assert_allclose(got_w, want_w, rtol=2e-6, atol=1e-7)


def test_routing_refuses_what_the_kernel_cannot_hold(moe, gpu):
    for n_experts, k in ((4, 5), (300, 4), (32, 9), (32, 0)):
        with pytest.raises(ValueError, match="experts"):
            moe.topk(0, 1, n_experts, k, 0, 0, gpu.stream)


# ---------------------------------------------------------------------------- expert products


def _experts(rng, qtype, n_experts, rows, cols):
    raw = random_weights(qtype, n_experts * rows, cols, rng)  # (E * rows, row_bytes)
    w = dequantize(raw, qtype, (n_experts, rows, cols)).astype(np.float64)
    return raw, w


def _rms64(x: np.ndarray, g: np.ndarray, eps: float) -> np.ndarray:
    x = x.astype(np.float64)
    return x / np.sqrt(np.mean(x * x, -1, keepdims=True) + eps) * g


def _clamped_swiglu(gate, up):
    g, u = np.minimum(gate, LIMIT), np.clip(up, -LIMIT, LIMIT)
    return (u + 1.0) * g / (1.0 + np.exp(-ALPHA * g))


@pytest.mark.parametrize("qtype", TYPES, ids=lambda t: t.name)
@pytest.mark.parametrize("norm", [False, True], ids=["plain", "fused-norm"])
def test_expert_gate_up_with_the_clamped_swiglu(gpu, moe, qtype, norm):
    rng = np.random.default_rng([int(qtype), norm])
    E, d_ff, k, T, eps = 5, 37, 3, 4, 1e-5
    cols = max(block_cols(qtype), 32) * 3
    raw_g, wg = _experts(rng, qtype, E, d_ff, cols)
    raw_u, wu = _experts(rng, qtype, E, d_ff, cols)
    bg, bu = (rng.normal(0, 0.5, (E, d_ff)).astype(np.float32) for _ in range(2))
    x = rng.standard_normal((T, cols))
    g = rng.uniform(0.5, 1.5, cols)
    if norm:  # the kernel's input is rmsnorm(x) * g
        x_in = x / np.sqrt(np.mean(x * x, -1, keepdims=True) + eps)
    else:
        x_in, g = x, np.ones(cols)
    # scaled so that some gate and up values pass the clamp limit (+-7)
    scale = 6.0 / np.std(np.einsum("erc,tc->ter", wg, x_in * g))
    if norm:
        g = (g * scale).astype(np.float32)
        x = x.astype(np.float32)
        xn = _rms64(x, g, eps)
    else:
        x = (x * scale).astype(np.float32)
        xn = x.astype(np.float64)
    ids = np.stack([rng.permutation(E)[:k] for _ in range(T)]).astype(np.int32)
    h = gpu.out(T * k * d_ff)
    moe.gate_up(
        qtype, gpu.put(raw_g).gpudata, gpu.put(raw_u).gpudata, gpu.put(bg).gpudata,
        gpu.put(bu).gpudata, d_ff, cols, gpu.put(x).gpudata, T, gpu.put(ids).gpudata, k,
        h.gpudata, gpu.stream, alpha=ALPHA, limit=LIMIT,
        norm_w=gpu.put(g).gpudata if norm else None, eps=eps,
    )  # fmt: skip
    got = gpu.get(h, (T, k, d_ff))
    gate = np.einsum("tjrc,tc->tjr", wg[ids], xn) + bg[ids]
    up = np.einsum("tjrc,tc->tjr", wu[ids], xn) + bu[ids]
    assert (gate > LIMIT).any() and (np.abs(up) > LIMIT).any()  # the clamp is exercised
    mag_g = np.einsum("tjrc,tc->tjr", np.abs(wg[ids]), np.abs(xn)) + np.abs(bg[ids])
    mag_u = np.einsum("tjrc,tc->tjr", np.abs(wu[ids]), np.abs(xn)) + np.abs(bu[ids])
    glu = np.minimum(gate, LIMIT) / (1.0 + np.exp(-ALPHA * np.minimum(gate, LIMIT)))
    # the activation's slope is below 1.2 and (up + 1) is at most 8: both factors' errors
    magnitude = 1.2 * (np.abs(np.clip(up, -LIMIT, LIMIT)) + 1.0) * mag_g + np.abs(glu) * mag_u
    assert_close(got, _clamped_swiglu(gate, up), magnitude, EXACT_TOL)


@pytest.mark.parametrize("qtype", TYPES, ids=lambda t: t.name)
@pytest.mark.parametrize("accumulate", [False, True])
def test_expert_down_weights_and_sums_the_chosen_experts(gpu, moe, qtype, accumulate):
    rng = np.random.default_rng([int(qtype), accumulate, 7])
    E, rows, k, T = 6, 41, 4, 3
    d_ff = max(block_cols(qtype), 32) * 2
    raw, w = _experts(rng, qtype, E, rows, d_ff)
    bd = rng.normal(0, 0.5, (E, rows)).astype(np.float32)
    h = rng.standard_normal((T, k, d_ff)).astype(np.float32)
    ids = np.stack([rng.permutation(E)[:k] for _ in range(T)]).astype(np.int32)
    wts = rng.dirichlet(np.ones(k), T).astype(np.float32)
    y0 = rng.standard_normal((T, rows)).astype(np.float32)
    y = gpu.out(T * rows, y0 if accumulate else None)
    moe.down(
        qtype, gpu.put(raw).gpudata, gpu.put(bd).gpudata, rows, d_ff, gpu.put(h).gpudata,
        gpu.put(ids).gpudata, gpu.put(wts).gpudata, k, T, y.gpudata, gpu.stream,
        accumulate=accumulate,
    )  # fmt: skip
    got = gpu.get(y, (T, rows))
    per = np.einsum("tjrc,tjc->tjr", w[ids], h) + bd[ids]  # (T, k, rows)
    ref = np.einsum("tj,tjr->tr", wts, per) + (y0 if accumulate else 0.0)
    mag = np.einsum("tjrc,tjc->tjr", np.abs(w[ids]), np.abs(h)) + np.abs(bd[ids])
    magnitude = np.einsum("tj,tjr->tr", wts, mag) + (np.abs(y0) if accumulate else 0.0)
    assert_close(got, ref, magnitude, EXACT_TOL)


# ---------------------------------------------------------------------------- a whole MoE FFN


def _fixture_layer(layer: int):
    """(config, {slot: numpy weights as the numpy engine holds them}, {slot: TensorRecord})."""
    from runtime.gguf_file import open_gguf
    from runtime.numpy_engine import NumpyEngine
    from tests.reference_data import reference_fixture

    with open_gguf(reference_fixture("gpt-oss-tiny")[0]) as model:
        eng = NumpyEngine.load(model, max_context=8)
        names = [s.name for s in model.plan.layer_slots]
        recs = {s.name: model.slot_records(s, layer)[0] for s in model.plan.layer_slots}
        config = model.config
    return config, {k: eng.w[k][layer] for k in names}, recs


EXPERT_SLOTS = ("gate_exps", "up_exps", "down_exps")
VECTOR_SLOTS = ("ffn_norm", "router_bias", "gate_exps_bias", "up_exps_bias", "down_exps_bias")


@pytest.mark.parametrize("layer", [0, 3])
@pytest.mark.parametrize("mode", ["decode", "prefill"])
def test_moe_ffn_matches_the_numpy_engine(gpu, moe, kq, ops, layer, mode):
    """The fixture's MXFP4 experts: RMSNorm, router (+ bias), top-4 of 8, gate|up, clamped
    SwiGLU, down, weighted sum into the residual, as the numpy engine's moe_ffn computes it.
    decode: one token per launch, the router with the fused RMSNorm (matvec_seg); prefill: all
    tokens per launch, rms_norm then the router's matmul with its bias."""
    c, w, recs = _fixture_layer(layer)
    m: MixtureOfExperts = c.moe
    rng = np.random.default_rng(layer)
    T, d = 5, c.d_model
    x = (rng.standard_normal((T, d)) * 2).astype(np.float32)
    h = nl.rms_norm(x, w["ffn_norm"], c.norm_eps)
    router = h @ w["router"].T + w["router_bias"]
    top = np.sort(router, -1)[:, ::-1]
    assert (top[:, m.top_k - 1] - top[:, m.top_k] > 1e-3).all()  # no near-tie decides a choice
    want = x + gpt_oss.moe_ffn(h, w, m)

    put = {n: gpu.put(np.asarray(recs[n].raw)) for n in ("router", *EXPERT_SLOTS)}
    f32 = {n: gpu.put(np.ascontiguousarray(w[n], np.float32)) for n in VECTOR_SLOTS}
    xd = gpu.put(x)
    logits, ids = (
        gpu.put(np.zeros((T, m.n_experts), np.float32)),
        gpu.put(np.zeros(T * 4, np.int32)),
    )
    wts, hid = gpu.put(np.zeros(T * 4, np.float32)), gpu.put(np.zeros(T * 4 * m.d_ff, np.float32))
    router_q = recs["router"].qtype
    experts = recs["gate_exps"].qtype
    assert experts == Q.MXFP4
    s = gpu.stream
    steps = [(t, 1) for t in range(T)] if mode == "decode" else [(0, T)]
    for t0, n in steps:
        xt = int(xd.gpudata) + 4 * t0 * d
        if mode == "decode":
            kq.matvec_seg(
                [(router_q, put["router"].gpudata, m.n_experts)], d, xt, logits.gpudata, s,
                norm_w_ptr=f32["ffn_norm"].gpudata, eps=c.norm_eps,
                bias_ptr=f32["router_bias"].gpudata,
            )  # fmt: skip
            src, norm = xt, dict(norm_w=f32["ffn_norm"].gpudata, eps=c.norm_eps)
        else:
            xn = gpu.put(np.zeros((T, d), np.float32))
            ops.rms_norm(xt, f32["ffn_norm"].gpudata, xn.gpudata, n, d, c.norm_eps, s)
            kq.matmul(
                router_q, put["router"].gpudata, m.n_experts, d, xn.gpudata, n, logits.gpudata,
                s, tensor_cores=False, bias_ptr=f32["router_bias"].gpudata,
            )  # fmt: skip
            src, norm = xn.gpudata, {}
        moe.topk(logits.gpudata, n, m.n_experts, m.top_k, ids.gpudata, wts.gpudata, s)
        moe.gate_up(
            experts, put["gate_exps"].gpudata, put["up_exps"].gpudata,
            f32["gate_exps_bias"].gpudata, f32["up_exps_bias"].gpudata, m.d_ff, d, src, n,
            ids.gpudata, m.top_k, hid.gpudata, s, alpha=m.alpha, limit=m.limit, **norm,
        )  # fmt: skip
        moe.down(
            experts, put["down_exps"].gpudata, f32["down_exps_bias"].gpudata, d, m.d_ff,
            hid.gpudata, ids.gpudata, wts.gpudata, m.top_k, n, xt, s, accumulate=True,
        )  # fmt: skip
    s.synchronize()
    got = xd.get()
    assert rel(got - x, want - x) < 1e-5
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * float(np.abs(want).max()))


# ---------------------------------------------------------------------------- gpt-oss-20b shapes


def test_mxfp4_products_at_gpt_oss_20b_shapes(gpu, moe, kq):
    """The experts of one 20B layer (32 of 2880 x 2880, MXFP4), top-4 for one token, and a plain
    MXFP4 matvec and matmul of that width."""
    rng = np.random.default_rng(20)
    E, d, d_ff, k = 32, 2880, 2880, 4
    raw_g = random_weights(Q.MXFP4, E * d_ff, d, rng)
    raw_u = random_weights(Q.MXFP4, E * d_ff, d, rng)
    bg, bu = np.zeros((E, d_ff), np.float32), np.zeros((E, d_ff), np.float32)
    x = (rng.standard_normal((1, d)) * 0.05).astype(np.float32)
    ids = np.array([[31, 0, 17, 5]], np.int32)
    h = gpu.out(k * d_ff)
    moe.gate_up(
        Q.MXFP4, gpu.put(raw_g).gpudata, gpu.put(raw_u).gpudata, gpu.put(bg).gpudata,
        gpu.put(bu).gpudata, d_ff, d, gpu.put(x).gpudata, 1, gpu.put(ids).gpudata, k, h.gpudata,
        gpu.stream, alpha=ALPHA, limit=LIMIT,
    )  # fmt: skip
    got = gpu.get(h, (k, d_ff))
    rows = raw_g.reshape(E, d_ff, -1)
    for j, e in enumerate(ids[0]):
        wg = dequantize(rows[e], Q.MXFP4, (d_ff, d)).astype(np.float64)
        wu = dequantize(raw_u.reshape(E, d_ff, -1)[e], Q.MXFP4, (d_ff, d)).astype(np.float64)
        gate, up = wg @ x[0], wu @ x[0]
        ref = _clamped_swiglu(gate, up)
        mag = 1.2 * 8 * (np.abs(wg) @ np.abs(x[0])) + 8 * (np.abs(wu) @ np.abs(x[0]))
        assert_close(got[j], ref, mag, EXACT_TOL)
    one = rows[3]  # an expert's matrix on its own: the plain kernels
    w = dequantize(one, Q.MXFP4, (d_ff, d)).astype(np.float64)
    y = gpu.out(d_ff)
    kq.matvec(Q.MXFP4, gpu.put(one).gpudata, d_ff, d, gpu.put(x).gpudata, y.gpudata, gpu.stream)
    assert_close(gpu.get(y, (d_ff,)), w @ x[0], np.abs(w) @ np.abs(x[0]), EXACT_TOL)
    xs = (rng.standard_normal((9, d)) * 0.05).astype(np.float32)
    ym = gpu.out(9 * d_ff)
    kq.matmul(
        Q.MXFP4, gpu.put(one).gpudata, d_ff, d, gpu.put(xs).gpudata, 9, ym.gpudata, gpu.stream,
        tensor_cores=False,
    )  # fmt: skip
    assert_close(gpu.get(ym, (9, d_ff)), xs @ w.T, np.abs(xs) @ np.abs(w).T, EXACT_TOL)
