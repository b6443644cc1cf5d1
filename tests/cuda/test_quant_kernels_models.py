"""Quant kernels as qwen2 and gemma3 use them, on the GPU against float64 numpy.

- matmul into a column slice of a wider output (ldy, col0) with a bias in the epilogue: a
  mixed-type q | k | v group (Q5_0, Q5_0, Q8_0 in both real files) as one product per matrix
  for all tokens, written where the group's output expects it, nothing else touched;
- the segmented matvec (up to three matrices of different types, fused RMSNorm, bias) that
  runs such a group in one decode launch;
- the output heads of 151,936 (qwen2) and 262,144 (gemma3, tied Q8_0) rows through the fused
  RMSNorm + tall matvec.

Bounds as tests/cuda/test_quant_kernels.py: 1e-5 of sum |w x| for the fp32 kernels, 2e-3 for
the tensor-core products; the bias and the accumulated old values count in the magnitude.
"""

from __future__ import annotations

import numpy as np
import pytest
from gguf import GGMLQuantizationType as Q

from runtime.quants import dequantize
from tests.cuda.checks import EXACT_TOL, TC_TOL, assert_close
from tests.cuda.ggml_random import TYPES, block_cols, random_weights
from tests.cuda.test_quant_kernels import _matvec_case

MATMUL_VARIANTS = ["simt", "tc32", "tcs32", "tcs64"]


def _rms(x: np.ndarray, g: np.ndarray, eps: float) -> np.ndarray:  # float64 reference
    x = x.astype(np.float64)
    return x / np.sqrt(np.mean(x * x) + eps) * g


def _full(gpu, init: np.ndarray):
    """An output buffer holding `init` (every value, not only the slice a kernel writes)."""
    return gpu.out(init.size, init)


# ---------------------------------------------------------------------------- matmul


@pytest.mark.parametrize("qtype", TYPES, ids=lambda t: t.name)
@pytest.mark.parametrize("variant", MATMUL_VARIANTS)
@pytest.mark.parametrize("accumulate", [False, True], ids=["store", "accumulate"])
def test_matmul_writes_a_column_slice_with_bias(kq, gpu, qtype, variant, accumulate):
    rng = np.random.default_rng([len(variant), int(accumulate), int(qtype)])
    rows, n, col0, ldy = 70, 37, 29, 150  # slice 29..99 of 150-wide rows
    cols = 768 if block_cols(qtype) == 256 else 288
    raw = random_weights(qtype, rows, cols, rng)
    x = rng.standard_normal((n, cols)).astype(np.float32)
    bias = rng.standard_normal(rows).astype(np.float32)
    y0 = rng.standard_normal((n, ldy)).astype(np.float32)
    y = _full(gpu, y0)
    kq.matmul(
        qtype, gpu.put(raw).gpudata, rows, cols, gpu.put(x).gpudata, n, y.gpudata, gpu.stream,
        accumulate=accumulate, variant=variant, ldy=ldy, col0=col0,
        bias_ptr=gpu.put(bias).gpudata,
    )  # fmt: skip
    got = gpu.get(y, (n, ldy))
    outside = np.ones(ldy, bool)
    outside[col0 : col0 + rows] = False
    np.testing.assert_array_equal(got[:, outside], y0[:, outside])  # nothing else written
    w = dequantize(raw, qtype, (rows, cols)).astype(np.float64)
    old = y0[:, col0 : col0 + rows].astype(np.float64) if accumulate else 0.0
    ref = x.astype(np.float64) @ w.T + bias + old
    magnitude = np.abs(x) @ np.abs(w).T + np.abs(bias) + np.abs(old)
    tol = EXACT_TOL if variant == "simt" else TC_TOL
    assert_close(got[:, col0 : col0 + rows], ref, magnitude, tol)


#: (q rows, k rows, v rows, cols, with bias) of the real files' layers with mixed types
GROUPS = {"qwen2": (896, 128, 128, 896, True), "gemma3": (1024, 256, 256, 640, False)}


@pytest.mark.parametrize("family", sorted(GROUPS))
@pytest.mark.parametrize("n", [1, 130, 512])
def test_mixed_type_qkv_group_in_one_product_per_matrix(kq, gpu, family, n):
    """q | k | v of types Q5_0, Q5_0, Q8_0 (the real files' mixed layers) as the engine's
    prefill runs them: three launches for all n tokens, each into its column slice."""
    rq, rk, rv, cols, with_bias = GROUPS[family]
    rng = np.random.default_rng(n)
    mats = [(Q.Q5_0, rq), (Q.Q5_0, rk), (Q.Q8_0, rv)]
    raws = [random_weights(t, r, cols, rng) for t, r in mats]
    width = rq + rk + rv
    x = rng.standard_normal((n, cols)).astype(np.float32)
    bias = rng.standard_normal(width).astype(np.float32) if with_bias else None
    y = gpu.out(n * width)
    xd, bd = gpu.put(x), None if bias is None else gpu.put(bias)
    keep = [gpu.put(r) for r in raws]
    col0 = 0
    for (qtype, rows), wd in zip(mats, keep, strict=True):
        bias_ptr = None if bd is None else int(bd.gpudata) + 4 * col0
        kq.matmul(
            qtype, wd.gpudata, rows, cols, xd.gpudata, n, y.gpudata, gpu.stream, ldy=width,
            col0=col0, bias_ptr=bias_ptr,
        )  # fmt: skip
        col0 += rows
    got = gpu.get(y, (n, width))
    w = np.concatenate(
        [dequantize(r, t, (rows, cols)) for r, (t, rows) in zip(raws, mats, strict=True)]
    ).astype(np.float64)
    b = 0.0 if bias is None else bias.astype(np.float64)
    ref = x.astype(np.float64) @ w.T + b
    magnitude = np.abs(x) @ np.abs(w).T + np.abs(b)
    assert_close(got, ref, magnitude, TC_TOL)


# ---------------------------------------------------------------------------- segmented matvec

#: segment types and rows, cols: every type appears, boundaries fall inside a block of 4 warps
SEGMENT_CASES = {
    "qwen2-qkv": ([(Q.Q5_0, 896), (Q.Q5_0, 128), (Q.Q8_0, 128)], 896),
    "gemma3-qkv": ([(Q.Q5_0, 1024), (Q.Q5_0, 256), (Q.Q8_0, 256)], 640),
    "f32-f16-q4_0": ([(Q.F32, 7), (Q.F16, 5), (Q.Q4_0, 9)], 256),
    "q4_1-q4_k-q6_k": ([(Q.Q4_1, 13), (Q.Q4_K, 3), (Q.Q6_K, 6)], 512),
    "q8_0-q6_k": ([(Q.Q8_0, 6), (Q.Q6_K, 11)], 768),
    "one-q5_0": ([(Q.Q5_0, 45)], 2304),  # long rows: past the slots loaded before the PDL wait
}


def segmented_case(kq, gpu, segs, cols, *, norm, with_bias, accumulate, seed, variant=None):
    """One segmented product of these (type, rows) matrices against float64 numpy."""
    rng = np.random.default_rng(seed)
    raws = [random_weights(t, r, cols, rng) for t, r in segs]
    total = sum(r for _, r in segs)
    x = (rng.standard_normal(cols) * 3).astype(np.float32)
    g = rng.uniform(0.5, 1.5, cols).astype(np.float32)
    bias = rng.standard_normal(total).astype(np.float32)
    y0 = rng.standard_normal(total).astype(np.float32)
    y = gpu.out(total, y0 if accumulate else None)
    keep = [gpu.put(r) for r in raws]
    gd, bd = gpu.put(g), gpu.put(bias)
    kq.matvec_seg(
        [(t, wd.gpudata, r) for (t, r), wd in zip(segs, keep, strict=True)], cols,
        gpu.put(x).gpudata, y.gpudata, gpu.stream, norm_w_ptr=gd.gpudata if norm else None,
        eps=1e-6, bias_ptr=bd.gpudata if with_bias else None, accumulate=accumulate,
        variant=variant,
    )  # fmt: skip
    got = gpu.get(y, (total,))
    w = np.concatenate(
        [dequantize(raw, t, (r, cols)) for raw, (t, r) in zip(raws, segs, strict=True)]
    ).astype(np.float64)
    xn = _rms(x, g, 1e-6) if norm else x.astype(np.float64)
    extra = (bias.astype(np.float64) if with_bias else 0.0) + (y0 if accumulate else 0.0)
    ref = w @ xn + extra
    magnitude = np.abs(w) @ np.abs(xn) + np.abs(extra)
    assert_close(got, ref, magnitude, EXACT_TOL)


@pytest.mark.parametrize("case", sorted(SEGMENT_CASES))
@pytest.mark.parametrize("norm", [False, True], ids=["plain", "norm"])
@pytest.mark.parametrize("with_bias", [False, True], ids=["no-bias", "bias"])
def test_segmented_matvec(kq_mv, gpu, case, norm, with_bias):
    segs, cols = SEGMENT_CASES[case]
    segmented_case(
        kq_mv, gpu, segs, cols, norm=norm, with_bias=with_bias,
        accumulate=case == "q8_0-q6_k",  # the accumulate epilogue too, on one case
        seed=[len(case), int(norm), int(with_bias)],
    )  # fmt: skip


def test_segmented_matvec_refuses_what_it_cannot_take(kq, gpu):
    with pytest.raises(ValueError, match="1 to 3 segments"):
        kq.matvec_seg([(Q.Q8_0, 0, 4)] * 4, 32, 0, 0, gpu.stream)
    with pytest.raises(ValueError, match="multiple of 256"):
        kq.matvec_seg([(Q.Q8_0, 0, 4), (Q.Q4_K, 0, 4)], 288, 0, 0, gpu.stream)
    with pytest.raises(ValueError, match="do not fit"):
        kq.matmul(Q.Q8_0, 0, 64, 32, 0, 3, 0, gpu.stream, ldy=100, col0=40)


# ---------------------------------------------------------------------------- decode matvecs

#: the decode products of both models at their real shapes and types (the default variant:
#: wide for 896 / 1024 / 2048 columns, wide4 for qwen2's 4864-wide ffn_down)
MODEL_MATVECS = {
    "qwen2-o": (Q.Q5_0, 896, 896),
    "qwen2-down-q6_k": (Q.Q6_K, 896, 4864),
    "qwen2-down-q4_k": (Q.Q4_K, 896, 4864),
    "gemma3-o": (Q.Q4_K, 640, 1024),
    "gemma3-down-q6_k": (Q.Q6_K, 640, 2048),
}


@pytest.mark.parametrize("case", sorted(MODEL_MATVECS))
@pytest.mark.parametrize("accumulate", [False, True], ids=["store", "accumulate"])
def test_matvec_at_the_new_models_shapes(kq_mv, gpu, case, accumulate):
    qtype, rows, cols = MODEL_MATVECS[case]
    _matvec_case(kq_mv, gpu, qtype, rows, cols, accumulate=accumulate, seed=rows + cols)


# ---------------------------------------------------------------------------- output heads


@pytest.mark.parametrize(
    ("vocab", "cols"), [(151_936, 896), (262_144, 640)], ids=["qwen2-head", "gemma3-head"]
)
def test_output_head_rmsnorm_matvec_at_full_vocabulary(kq, gpu, vocab, cols):
    """The engine's head: matvec_norm (tall by default from 4096 rows) over the Q8_0 output
    rows, gemma3's being its tied 262,144-row embedding."""
    rng = np.random.default_rng(vocab)
    raw = random_weights(Q.Q8_0, vocab, cols, rng)
    x = (rng.standard_normal(cols) * 2).astype(np.float32)
    g = rng.uniform(0.5, 1.5, cols).astype(np.float32)
    y = gpu.out(vocab)
    kq.matvec_norm(
        Q.Q8_0, gpu.put(raw).gpudata, vocab, cols, gpu.put(x).gpudata, gpu.put(g).gpudata,
        1e-6, y.gpudata, gpu.stream,
    )  # fmt: skip
    got = gpu.get(y, (vocab,))
    xn = _rms(x, g, 1e-6)
    for r0 in range(0, vocab, 32768):  # the reference in slices: 262,144 x 640 is 1.3 GB in f64
        w = dequantize(raw[r0 : r0 + 32768], Q.Q8_0, (min(32768, vocab - r0), cols))
        w = w.astype(np.float64)
        assert_close(got[r0 : r0 + 32768], w @ xn, np.abs(w) @ np.abs(xn), EXACT_TOL)
