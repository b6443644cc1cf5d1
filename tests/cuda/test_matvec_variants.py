"""Every decode matvec variant (cuda/matvec_variants.py) on the GPU against float64 numpy, and
the variants' per-row results against each other bit for bit.

`kq_mr` is QuantKernels(fast_cvt=True, mr=True): quant_matvec.cu built with the exact fast
integer->float conversion, and every quant_matvec_mr.cu variant for every type. Sizes: rows
that are not multiples of a block's groups, rows of several chunks (2 x the variant's chunk + 1
slots, so a later chunk is loaded after the PDL wait and its lines prefetched), warps of a
split row that get no slot at all (one block of Q8_0 over 8 warps), persistent heads whose
warps loop over several row groups. Bounds as tests/cuda/test_quant_kernels.py (1e-5 of
sum |w x|); the GLU bound is that file's too.

Bitwise: a row's sum runs over the same slots in the same order whatever the rows per warp, the
block size or the persistence (and in quant_matvec.cu's kernels with the same warps per row),
so their outputs must be identical. That is what lets a batched decode give each token the
single-sequence result.
"""

from __future__ import annotations

import numpy as np
import pytest
from gguf import GGMLQuantizationType as Q

from cuda.matvec_variants import VARIANTS
from runtime.quants import dequantize
from tests.cuda.checks import EXACT_TOL, assert_close
from tests.cuda.ggml_random import TYPES, block_cols, random_weights
from tests.cuda.test_quant_kernels import _assert_glu, _matvec_case, _rms
from tests.cuda.test_quant_kernels_models import SEGMENT_CASES, segmented_case


@pytest.fixture(scope="module")
def kq_mr(cuda_ctx):
    from cuda.quant_ops import QuantKernels

    return QuantKernels(fast_cvt=True, mr=True)


def _long_cols(qtype: Q, var) -> int:
    """Row width of 2 chunks + 1 slot of this variant (base kernels: 2304 values)."""
    if var.rounds == 0 or var.persistent:
        return 2304 if not var.persistent else 1024
    values = (2 * var.chunk_slots + 1) * 8
    qk = block_cols(qtype)
    return (values + qk - 1) // qk * qk


MV = sorted(VARIANTS["mv"])
NORM = sorted(VARIANTS["norm"])
GLU = sorted(VARIANTS["glu"])
SEG = sorted(VARIANTS["seg"])


@pytest.mark.parametrize("qtype", TYPES, ids=lambda t: t.name)
@pytest.mark.parametrize("variant", MV)
@pytest.mark.parametrize("case", ["small", "odd-accumulate", "long"])
def test_matvec_variant_matches_numpy(kq_mr, gpu, qtype, variant, case):
    var = VARIANTS["mv"][variant]
    rows, cols, acc = {
        "small": (7, block_cols(qtype) * 3, False),
        "odd-accumulate": (193, block_cols(qtype) * 5, True),
        "long": (37, _long_cols(qtype, var), False),
    }[case]
    _matvec_case(kq_mr, gpu, qtype, rows, cols, accumulate=acc, seed=rows, variant=variant)


def _norm_case(kq, gpu, qtype, rows, cols, variant, *, accumulate, seed):
    rng = np.random.default_rng(seed)
    raw = random_weights(qtype, rows, cols, rng)
    x = (rng.standard_normal(cols) * 3).astype(np.float32)
    g = rng.uniform(0.5, 1.5, cols).astype(np.float32)
    y0 = rng.standard_normal(rows).astype(np.float32)
    y = gpu.out(rows, y0 if accumulate else None)
    kq.matvec_norm(
        qtype, gpu.put(raw).gpudata, rows, cols, gpu.put(x).gpudata, gpu.put(g).gpudata, 1e-5,
        y.gpudata, gpu.stream, accumulate=accumulate, variant=variant,
    )  # fmt: skip
    got = gpu.get(y, (rows,))
    w = dequantize(raw, qtype, (rows, cols)).astype(np.float64)
    xn = _rms(x, g, 1e-5)
    ref = w @ xn + (y0 if accumulate else 0.0)
    assert_close(got, ref, np.abs(w) @ np.abs(xn) + (np.abs(y0) if accumulate else 0.0), EXACT_TOL)
    return got


@pytest.mark.parametrize("qtype", TYPES, ids=lambda t: t.name)
@pytest.mark.parametrize("variant", NORM)
@pytest.mark.parametrize("case", ["small-accumulate", "long"])
def test_matvec_norm_variant_matches_numpy(kq_mr, gpu, qtype, variant, case):
    var = VARIANTS["norm"][variant]
    rows, cols, acc = {
        "small-accumulate": (7, block_cols(qtype) * 3, True),
        "long": (37, _long_cols(qtype, var), False),
    }[case]
    _norm_case(kq_mr, gpu, qtype, rows, cols, variant, accumulate=acc, seed=rows)


@pytest.mark.parametrize("qtype", TYPES, ids=lambda t: t.name)
@pytest.mark.parametrize("variant", [n for n in NORM if VARIANTS["norm"][n].persistent])
def test_persistent_head_variant_loops_over_row_groups(kq_mr, gpu, qtype, variant):
    """More row groups than the grid's warps (132 SMs x <= 16 resident warps): each loops."""
    rows = 9001 * VARIANTS["norm"][variant].outs
    cols = block_cols(qtype) * (1 if block_cols(qtype) > 32 else 2)
    _norm_case(kq_mr, gpu, qtype, rows, cols, variant, accumulate=False, seed=rows)


@pytest.mark.parametrize("qtype", TYPES, ids=lambda t: t.name)
@pytest.mark.parametrize("variant", GLU)
@pytest.mark.parametrize("act", ["silu", "gelu_tanh"])
@pytest.mark.parametrize(("d_ff", "blocks"), [(5, 2), (70, 3), (37, 9)])
def test_matvec_glu_variant_matches_numpy(kq_mr, gpu, qtype, variant, act, d_ff, blocks):
    rng = np.random.default_rng(d_ff + blocks)
    cols = block_cols(qtype) * blocks * (8 if blocks == 9 else 1)  # 9 x 8 blocks: 2 chunks
    raw = random_weights(qtype, 2 * d_ff, cols, rng)
    x = rng.standard_normal(cols).astype(np.float32)
    g = rng.uniform(0.5, 1.5, cols).astype(np.float32)
    h = gpu.out(d_ff)
    kq_mr.matvec_norm_glu(
        qtype, gpu.put(raw).gpudata, d_ff, cols, gpu.put(x).gpudata, gpu.put(g).gpudata, 1e-6,
        h.gpudata, gpu.stream, act=act, variant=variant,
    )  # fmt: skip
    got = gpu.get(h, (d_ff,))
    w = dequantize(raw, qtype, (2 * d_ff, cols)).astype(np.float64)
    _assert_glu(got, w, _rms(x, g, 1e-6), d_ff, act)


#: test_quant_kernels_models' cases, and odd segment sizes, so a 2-row group ends inside a
#: segment, next to its neighbour
SEG_CASES = {**SEGMENT_CASES, "odd-q5_0-q8_0-q4_k": ([(Q.Q5_0, 7), (Q.Q8_0, 5), (Q.Q4_K, 9)], 512)}


@pytest.mark.parametrize("case", sorted(SEG_CASES))
@pytest.mark.parametrize("variant", SEG)
@pytest.mark.parametrize(("norm", "with_bias"), [(False, True), (True, False)],
                         ids=["bias", "norm"])  # fmt: skip
def test_segmented_variant_matches_numpy(kq_mr, gpu, case, variant, norm, with_bias):
    segs, cols = SEG_CASES[case]
    segmented_case(
        kq_mr, gpu, segs, cols, norm=norm, with_bias=with_bias, accumulate=case == "q8_0-q6_k",
        seed=[len(case), int(norm), int(with_bias)], variant=variant,
    )  # fmt: skip


# ---------------------------------------------------------------------------- bitwise


def _same_order_groups(kind: str) -> list[list[str]]:
    """Variants of a kind whose rows are summed in the same order: same warps per row."""
    by_wpr: dict[int, list[str]] = {}
    for name, var in VARIANTS[kind].items():
        by_wpr.setdefault(var.wpr, []).append(name)
    return [sorted(v) for v in by_wpr.values() if len(v) > 1]


def _outputs(kq, gpu, kind, qtype, name, raw, rows, cols, x, g):
    y = gpu.out(rows)
    w, xd, gd = gpu.put(raw), gpu.put(x), gpu.put(g)
    if kind == "mv":
        kq.matvec(qtype, w.gpudata, rows, cols, xd.gpudata, y.gpudata, gpu.stream, variant=name)
    elif kind == "norm":
        kq.matvec_norm(
            qtype, w.gpudata, rows, cols, xd.gpudata, gd.gpudata, 1e-6, y.gpudata, gpu.stream,
            variant=name,
        )  # fmt: skip
    elif kind == "glu":
        kq.matvec_norm_glu(
            qtype, w.gpudata, rows, cols, xd.gpudata, gd.gpudata, 1e-6, y.gpudata, gpu.stream,
            variant=name,
        )  # fmt: skip
    else:
        kq.matvec_seg(
            [(qtype, w.gpudata, rows)], cols, xd.gpudata, y.gpudata, gpu.stream,
            norm_w_ptr=gd.gpudata, eps=1e-6, variant=name,
        )  # fmt: skip
    return gpu.get(y, (rows,))


@pytest.mark.parametrize("kind", ["mv", "norm", "glu", "seg"])
@pytest.mark.parametrize("qtype", [Q.Q8_0, Q.Q4_1, Q.Q5_0, Q.Q6_K], ids=lambda t: t.name)
def test_variants_of_one_row_order_agree_bitwise(kq_mr, gpu, kind, qtype):
    rng = np.random.default_rng(int(qtype))
    rows, cols = 203, 1024  # persistent variants take up to 1024 values
    raw = random_weights(qtype, 2 * rows if kind == "glu" else rows, cols, rng)
    x = rng.standard_normal(cols).astype(np.float32)
    g = rng.uniform(0.5, 1.5, cols).astype(np.float32)
    for group in _same_order_groups(kind):
        outs = {n: _outputs(kq_mr, gpu, kind, qtype, n, raw, rows, cols, x, g) for n in group}
        first = group[0]
        for name in group[1:]:
            np.testing.assert_array_equal(outs[name], outs[first], err_msg=f"{name} vs {first}")


def test_the_fast_conversion_build_agrees_bitwise_with_the_default(kq, kq_mr, gpu):
    """GGML_FAST_CVT builds the same floats: quant_matvec.cu's kernels agree either way."""
    rng = np.random.default_rng(5)
    for qtype in TYPES:
        rows, cols = 45, block_cols(qtype) * 4
        raw = random_weights(qtype, rows, cols, rng)
        x = rng.standard_normal(cols).astype(np.float32)
        g = rng.uniform(0.5, 1.5, cols).astype(np.float32)
        a = _outputs(kq, gpu, "norm", qtype, "plain", raw, rows, cols, x, g)
        b = _outputs(kq_mr, gpu, "norm", qtype, "plain", raw, rows, cols, x, g)
        np.testing.assert_array_equal(a, b, err_msg=qtype.name)


def test_persistent_variants_refuse_rows_they_cannot_hold(kq_mr, gpu):
    with pytest.raises(ValueError, match="rows of <= 1024"):
        kq_mr.matvec_norm(Q.Q8_0, 0, 4096, 1056, 0, 0, 1e-6, 0, gpu.stream, variant="mr-p2")


def test_unloaded_variant_is_a_clear_error(kq, gpu):
    if kq.mr_types:
        pytest.skip("the defaults load the mr builds")
    with pytest.raises(ValueError, match="not loaded"):
        kq.matvec(Q.Q5_0, 0, 4, 32, 0, 0, gpu.stream, variant="mr-r4")
