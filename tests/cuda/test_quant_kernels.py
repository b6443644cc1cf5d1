"""Quant kernels on the GPU against numpy: embedding gather, matvec, matmul for every weight type.

Weights are random but valid GGML blocks (random quant bytes, finite fp16 scales), decoded by
`runtime.quants.dequantize` (itself tested against gguf-py) and multiplied in float64.
Tolerances are bounds on the error relative to sum |w x| of each output (the size of the terms):
1e-5 for the fp32 paths, 2e-3 for the tensor-core matmul that rounds X and W to fp16 (each
rounding is at most 2^-11 relative). Sizes include rows that are not multiples of the warps or
tiles, token counts that are not multiples of the tile, and multi-block rows. A guard region
after every output checks that nothing is written out of bounds (fixtures `kq`, `kq_mv`, `gpu`:
tests/cuda/conftest.py).
"""

from __future__ import annotations

import numpy as np
import pytest
from gguf import GGMLQuantizationType as Q

from runtime.quants import dequantize
from tests.cuda.checks import EXACT_TOL, GLU_REFS, TC_TOL, assert_close, glu_ref
from tests.cuda.ggml_random import TYPES, block_cols, random_weights

# ---------------------------------------------------------------------------- embedding


@pytest.mark.parametrize("qtype", TYPES, ids=lambda t: t.name)
@pytest.mark.parametrize("n_tokens", [1, 5, 130])
@pytest.mark.parametrize("scale", [1.0, float(np.sqrt(640.0))], ids=["plain", "gemma-scale"])
def test_embed_rows_match_numpy(kq, gpu, qtype, n_tokens, scale):
    rng = np.random.default_rng(1000 + n_tokens)
    vocab, cols = 61, block_cols(qtype) * 3
    raw = random_weights(qtype, vocab, cols, rng)
    ids = rng.integers(0, vocab, n_tokens).astype(np.int32)
    ids[0] = vocab - 1  # the last row too
    out = gpu.out(n_tokens * cols)
    kq.embed_rows(
        qtype, gpu.put(raw).gpudata, cols, gpu.put(ids).gpudata, n_tokens, out.gpudata, gpu.stream,
        scale=scale,
    )  # fmt: skip
    got = gpu.get(out, (n_tokens, cols))
    # gemma3 scales in fp32 after the dequantization, as llama.cpp's ggml_scale does
    ref = dequantize(raw, qtype, (vocab, cols))[ids] * np.float32(scale)
    # one rounding apart at most (the GPU may fuse d * q + m into one FMA)
    np.testing.assert_allclose(got, ref, rtol=1e-6, atol=1e-6 * float(np.abs(ref).max()))


@pytest.mark.parametrize("qtype", [Q.F32, Q.F16], ids=lambda t: t.name)
def test_embed_rows_of_any_width_for_plain_floats(kq, gpu, qtype):
    rng = np.random.default_rng(7)
    vocab, cols, n_tokens = 9, 13, 4
    raw = random_weights(qtype, vocab, cols, rng)
    ids = np.array([8, 0, 3, 3], np.int32)
    out = gpu.out(n_tokens * cols)
    kq.embed_rows(
        qtype, gpu.put(raw).gpudata, cols, gpu.put(ids).gpudata, n_tokens, out.gpudata, gpu.stream,
        scale=0.5,
    )  # fmt: skip
    got = gpu.get(out, (n_tokens, cols))  # a power of two: the scaling is exact
    np.testing.assert_array_equal(got, dequantize(raw, qtype, (vocab, cols))[ids] * 0.5)


# ---------------------------------------------------------------------------- matvec


def _matvec_case(kq, gpu, qtype, rows, cols, *, accumulate, seed, variant=None):
    rng = np.random.default_rng(seed)
    raw = random_weights(qtype, rows, cols, rng)
    x = rng.standard_normal(cols).astype(np.float32)
    y0 = rng.standard_normal(rows).astype(np.float32)
    y = gpu.out(rows, y0 if accumulate else None)
    kq.matvec(
        qtype,
        gpu.put(raw).gpudata,
        rows,
        cols,
        gpu.put(x).gpudata,
        y.gpudata,
        gpu.stream,
        accumulate=accumulate,
        variant=variant,
    )
    got = gpu.get(y, (rows,))
    w = dequantize(raw, qtype, (rows, cols)).astype(np.float64)
    ref = w @ x + (y0 if accumulate else 0.0)
    magnitude = np.abs(w) @ np.abs(x) + (np.abs(y0) if accumulate else 0.0)
    assert_close(got, ref, magnitude, EXACT_TOL)


MATVEC_VARIANTS = ["plain", "tall", "wide", "wide4"]


@pytest.mark.parametrize("qtype", TYPES, ids=lambda t: t.name)
@pytest.mark.parametrize(("rows", "blocks"), [(1, 1), (7, 3), (193, 5)])
@pytest.mark.parametrize("variant", MATVEC_VARIANTS)
def test_matvec_matches_numpy(kq_mv, gpu, qtype, rows, blocks, variant):
    cols = block_cols(qtype) * blocks
    _matvec_case(kq_mv, gpu, qtype, rows, cols, accumulate=False, seed=rows, variant=variant)


@pytest.mark.parametrize("qtype", TYPES, ids=lambda t: t.name)
@pytest.mark.parametrize("variant", MATVEC_VARIANTS)
def test_matvec_accumulates_into_y(kq_mv, gpu, qtype, variant):
    cols = block_cols(qtype) * 2
    _matvec_case(kq_mv, gpu, qtype, 45, cols, accumulate=True, seed=3, variant=variant)


@pytest.mark.parametrize(
    ("qtype", "rows", "cols"),
    [(Q.Q4_1, 1536, 576), (Q.Q4_1, 576, 1536), (Q.Q4_1, 192, 576), (Q.Q8_0, 49152, 576)],
    ids=["q4_1-ffn-up", "q4_1-ffn-down", "q4_1-attn-k", "q8_0-head"],
)
def test_matvec_at_the_default_models_shapes(kq_mv, gpu, qtype, rows, cols):
    _matvec_case(kq_mv, gpu, qtype, rows, cols, accumulate=False, seed=rows + cols)


# ---------------------------------------------------------------------------- fused matvecs


def _rms(x: np.ndarray, g: np.ndarray, eps: float) -> np.ndarray:  # float64 reference
    x = x.astype(np.float64)
    return x / np.sqrt(np.mean(x * x) + eps) * g


@pytest.mark.parametrize("qtype", TYPES, ids=lambda t: t.name)
@pytest.mark.parametrize("rows", [7, 193])
@pytest.mark.parametrize("variant", ["plain", "tall"])
def test_matvec_with_fused_rmsnorm(kq_mv, gpu, qtype, rows, variant):
    rng = np.random.default_rng(rows + 17)
    cols, eps = block_cols(qtype) * 3, 1e-5
    raw = random_weights(qtype, rows, cols, rng)
    x = (rng.standard_normal(cols) * 3).astype(np.float32)
    g = rng.uniform(0.5, 1.5, cols).astype(np.float32)
    y0 = rng.standard_normal(rows).astype(np.float32)
    accumulate = rows == 7
    y = gpu.out(rows, y0 if accumulate else None)
    kq_mv.matvec_norm(
        qtype, gpu.put(raw).gpudata, rows, cols, gpu.put(x).gpudata, gpu.put(g).gpudata, eps,
        y.gpudata, gpu.stream, accumulate=accumulate, variant=variant,
    )  # fmt: skip
    got = gpu.get(y, (rows,))
    w = dequantize(raw, qtype, (rows, cols)).astype(np.float64)
    xn = _rms(x, g, eps)
    ref = w @ xn + (y0 if accumulate else 0.0)
    magnitude = np.abs(w) @ np.abs(xn) + (np.abs(y0) if accumulate else 0.0)
    assert_close(got, ref, magnitude, EXACT_TOL)


def _assert_glu(got, w, xn, d_ff, act) -> None:
    """got = act(W_gate @ xn) * (W_up @ xn) within the fp32 bound of both factors."""
    gate, up = w[:d_ff] @ xn, w[d_ff:] @ xn
    fn, slope = GLU_REFS[act]
    mag = np.abs(w) @ np.abs(xn)
    # an error e in gate moves act by at most slope * e: bound both factors' errors
    magnitude = (
        slope * mag[:d_ff] * np.abs(up)
        + mag[d_ff:] * np.abs(fn(gate))
        + mag[:d_ff] * mag[d_ff:] * EXACT_TOL
    )
    assert_close(got, glu_ref(gate, up, act), magnitude, EXACT_TOL)


@pytest.mark.parametrize("qtype", TYPES, ids=lambda t: t.name)
@pytest.mark.parametrize("d_ff", [5, 70])
@pytest.mark.parametrize("act", ["silu", "gelu_tanh"])
def test_matvec_with_fused_rmsnorm_and_glu(kq_mv, gpu, qtype, d_ff, act):
    rng = np.random.default_rng(d_ff)
    cols, eps = block_cols(qtype) * 2, 1e-6
    raw = random_weights(qtype, 2 * d_ff, cols, rng)  # gate rows, then up rows
    x = rng.standard_normal(cols).astype(np.float32)
    g = rng.uniform(0.5, 1.5, cols).astype(np.float32)
    h = gpu.out(d_ff)
    kq_mv.matvec_norm_glu(
        qtype, gpu.put(raw).gpudata, d_ff, cols, gpu.put(x).gpudata, gpu.put(g).gpudata, eps,
        h.gpudata, gpu.stream, act=act,
    )  # fmt: skip
    got = gpu.get(h, (d_ff,))
    w = dequantize(raw, qtype, (2 * d_ff, cols)).astype(np.float64)
    _assert_glu(got, w, _rms(x, g, eps), d_ff, act)


@pytest.mark.parametrize("qtype", [Q.F16, Q.Q8_0, Q.Q4_1, Q.Q4_K], ids=lambda t: t.name)
@pytest.mark.parametrize(
    "kernel", ["plain", "tall", "wide", "wide4", "norm", "norm-tall", "swiglu", "geglu"]
)
def test_matvec_long_rows(kq_mv, gpu, qtype, kernel):
    """Rows long enough to run past the slots a lane loads before the PDL wait (MV_PRE)."""
    rng = np.random.default_rng(11)
    rows, cols, eps = 37, 2304, 1e-5
    glu = {"swiglu": "silu", "geglu": "gelu_tanh"}.get(kernel)
    n_w = 2 * rows if glu else rows
    raw = random_weights(qtype, n_w, cols, rng)
    x = rng.standard_normal(cols).astype(np.float32)
    g = rng.uniform(0.5, 1.5, cols).astype(np.float32)
    y = gpu.out(rows)
    args = (qtype, gpu.put(raw).gpudata, rows, cols, gpu.put(x).gpudata)
    w = dequantize(raw, qtype, (n_w, cols)).astype(np.float64)
    if kernel in ("plain", "tall", "wide", "wide4"):
        kq_mv.matvec(*args, y.gpudata, gpu.stream, variant=kernel)
        xn = x.astype(np.float64)
    elif glu:
        kq_mv.matvec_norm_glu(*args, gpu.put(g).gpudata, eps, y.gpudata, gpu.stream, act=glu)
        xn = _rms(x, g, eps)
    else:
        variant = "tall" if kernel == "norm-tall" else "plain"
        kq_mv.matvec_norm(*args, gpu.put(g).gpudata, eps, y.gpudata, gpu.stream, variant=variant)
        xn = _rms(x, g, eps)
    got = gpu.get(y, (rows,))
    if glu:
        _assert_glu(got, w, xn, rows, glu)
    else:
        assert_close(got, w @ xn, np.abs(w) @ np.abs(xn), EXACT_TOL)


# ---------------------------------------------------------------------------- matmul


def _matmul_case(kq, gpu, qtype, rows, cols, n, *, variant, accumulate, seed):
    rng = np.random.default_rng(seed)
    raw = random_weights(qtype, rows, cols, rng)
    x = rng.standard_normal((n, cols)).astype(np.float32)
    y0 = rng.standard_normal((n, rows)).astype(np.float32)
    y = gpu.out(n * rows, y0 if accumulate else None)
    kq.matmul(
        qtype, gpu.put(raw).gpudata, rows, cols, gpu.put(x).gpudata, n, y.gpudata, gpu.stream,
        accumulate=accumulate, variant=variant,
    )  # fmt: skip
    got = gpu.get(y, (n, rows))
    w = dequantize(raw, qtype, (rows, cols)).astype(np.float64)
    ref = x.astype(np.float64) @ w.T + (y0 if accumulate else 0.0)
    magnitude = np.abs(x) @ np.abs(w).T + (np.abs(y0) if accumulate else 0.0)
    exact = variant == "simt"  # None: the default, a tensor-core kernel
    assert_close(got, ref, magnitude, EXACT_TOL if exact else TC_TOL)
    if not exact:  # the bound is the worst case; typical errors are far smaller
        rel = np.linalg.norm(got - ref) / np.linalg.norm(ref)
        assert rel < 2e-3, rel


MATMUL_SIZES = [(193, 1), (7, 5), (70, 130)]  # (rows, n tokens)
MATMUL_VARIANTS = ["simt", "tc32", "tcs32", "tcs64"]


@pytest.mark.parametrize("qtype", TYPES, ids=lambda t: t.name)
@pytest.mark.parametrize(("rows", "n"), MATMUL_SIZES)
@pytest.mark.parametrize("variant", MATMUL_VARIANTS)
def test_matmul_matches_numpy(kq, gpu, qtype, rows, n, variant):
    # 288 = two full 128-column stages and a partial one; 768 = six stages of 256-value blocks
    cols = 768 if block_cols(qtype) == 256 else 288
    _matmul_case(kq, gpu, qtype, rows, cols, n, variant=variant, accumulate=False, seed=rows * n)


@pytest.mark.parametrize("qtype", [Q.Q4_1, Q.Q8_0, Q.Q6_K], ids=lambda t: t.name)
@pytest.mark.parametrize("variant", MATMUL_VARIANTS)
def test_matmul_accumulates_into_y(kq, gpu, qtype, variant):
    cols = max(block_cols(qtype), 32) * 2
    _matmul_case(kq, gpu, qtype, 33, cols, 67, variant=variant, accumulate=True, seed=5)


@pytest.mark.parametrize("variant", [None, "simt", "tcs32", "tcs64"])
def test_matmul_prefill_shape_of_the_default_model(kq, gpu, variant):
    rows, cols, n = 1536, 576, 512  # ffn_up, a 512-token prompt: 4.5 stages of 128 columns
    _matmul_case(kq, gpu, Q.Q4_1, rows, cols, n, variant=variant, accumulate=False, seed=11)


def test_shapes_the_kernels_cannot_take_are_refused(kq, gpu):
    with pytest.raises(ValueError, match="multiple of 32"):
        kq.matvec(Q.Q4_1, 0, 4, 48, 0, 0, gpu.stream)
    with pytest.raises(ValueError, match="multiple of 256"):
        kq.matmul(Q.Q4_K, 0, 4, 288, 0, 3, 0, gpu.stream)
    with pytest.raises(ValueError, match="no CUDA kernels"):
        kq.matvec(Q.Q5_1, 0, 4, 32, 0, 0, gpu.stream)
    assert kq.supports(Q.Q4_1) and not kq.supports(Q.Q5_1)
