"""runtime.quants against gguf-py's reference dequantization and against hand-decoded blocks."""

from __future__ import annotations

import numpy as np
import pytest
from gguf import GGMLQuantizationType as Q
from gguf import quants as ref

from runtime import quants

#: byte ranges of fp16 scale fields inside one block, per type
_SCALE_FIELDS = {
    Q.Q8_0: [(0, 2)],
    Q.Q4_0: [(0, 2)],
    Q.Q4_1: [(0, 2), (2, 4)],
    Q.Q5_0: [(0, 2)],
    Q.Q4_K: [(0, 2), (2, 4)],
    Q.Q6_K: [(208, 210)],
}
QUANTIZED = list(_SCALE_FIELDS)


def random_blocks(qtype: Q, n_blocks: int, rng: np.random.Generator) -> np.ndarray:
    """(n_blocks, type_size) uint8: random payload, fp16 scales random but finite."""
    _, size = quants.BLOCK_SIZES[qtype]
    blocks = rng.integers(0, 256, size=(n_blocks, size), dtype=np.uint8)
    for lo, hi in _SCALE_FIELDS[qtype]:
        scale = rng.normal(0, 0.02, size=(n_blocks, 1)).astype(np.float16)
        blocks[:, lo:hi] = scale.view(np.uint8)
    return blocks


@pytest.mark.parametrize("qtype", QUANTIZED, ids=lambda q: q.name)
def test_random_blocks_match_gguf_py(qtype: Q):
    rng = np.random.default_rng(int(qtype))
    block, size = quants.BLOCK_SIZES[qtype]
    rows, cols = 7, 3 * block  # odd row count: nothing is a multiple of a power of two
    raw = random_blocks(qtype, rows * 3, rng).reshape(rows, 3 * size)
    ours = quants.dequantize(raw, qtype, (rows, cols))
    theirs = ref.dequantize(raw, qtype)
    assert ours.dtype == np.float32 and ours.shape == (rows, cols)
    assert np.isfinite(ours).all()
    np.testing.assert_array_equal(ours, theirs)


@pytest.mark.parametrize("qtype", [Q.Q8_0, Q.Q4_0, Q.Q4_1, Q.Q5_0], ids=lambda q: q.name)
def test_quantize_then_dequantize_matches_gguf_py(qtype: Q):
    rng = np.random.default_rng(7)
    x = rng.normal(0, 1, size=(5, 96)).astype(np.float32)
    raw = ref.quantize(x, qtype)  # (5, row_bytes)
    ours = quants.dequantize(raw, qtype, x.shape)
    np.testing.assert_array_equal(ours, ref.dequantize(raw, qtype))
    # and it is a sane approximation of what went in (4-bit: about 1/16 of the range)
    assert np.abs(ours - x).max() < 0.5


@pytest.mark.parametrize("qtype", [Q.F32, Q.F16], ids=lambda q: q.name)
def test_float_types(qtype: Q):
    x = np.random.default_rng(3).normal(size=(4, 10)).astype(np.float32)
    stored = x.astype(np.float16 if qtype == Q.F16 else np.float32)
    raw = stored.view(np.uint8)  # (4, 10 * itemsize)
    ours = quants.dequantize(raw, qtype, (4, 10))
    np.testing.assert_array_equal(ours, stored.astype(np.float32))
    np.testing.assert_array_equal(ours, ref.dequantize(raw, qtype).reshape(4, 10))


def test_q4_0_by_hand():
    # d = 0.5; byte j holds value j in its low nibble and value j+16 in its high nibble
    qs = np.array([(j % 16) | ((15 - j % 16) << 4) for j in range(16)], np.uint8)
    block = np.concatenate([np.array([0.5], np.float16).view(np.uint8), qs])
    expected = [0.5 * (j - 8) for j in range(16)] + [0.5 * (15 - j - 8) for j in range(16)]
    np.testing.assert_array_equal(quants.dequantize(block, Q.Q4_0, (32,)), expected)


def test_q5_0_high_bits_by_hand():
    # all low nibbles 0; high bits set for values 1 and 17 only -> those are 16 - 16 = 0,
    # every other value is 0 - 16 = -16, times d = 1
    qh = np.array([(1 << 1) | (1 << 17)], "<u4").view(np.uint8)
    block = np.concatenate([np.array([1.0], np.float16).view(np.uint8), qh, np.zeros(16, np.uint8)])
    out = quants.dequantize(block, Q.Q5_0, (32,))
    expected = np.full(32, -16.0, np.float32)
    expected[[1, 17]] = 0.0
    np.testing.assert_array_equal(out, expected)


def test_q4_k_scales_by_hand():
    # sub-block s has scale s+1 and min 0 (6-bit packing of ggml get_scale_min_k4);
    # d = 1, every nibble = 1 -> sub-block s decodes to s + 1 throughout
    sc = np.arange(1, 9, dtype=np.uint8)
    packed = np.zeros(12, np.uint8)
    packed[0:4] = sc[0:4]
    packed[8:12] = sc[4:8] & 0x0F  # values < 16: no high bits needed
    d = np.array([1.0, 0.0], np.float16).view(np.uint8)
    block = np.concatenate([d, packed, np.full(128, 0x11, np.uint8)])
    out = quants.dequantize(block, Q.Q4_K, (256,)).reshape(8, 32)
    np.testing.assert_array_equal(out, np.repeat(np.arange(1, 9, dtype=np.float32)[:, None], 32, 1))


def test_mxfp4_every_scale_and_code_matches_gguf_py_bit_for_bit():
    # 256 blocks: block i has E8M0 scale byte i (0 and 255 included, where ggml's half-scale
    # is a denormal or overflows 12 * 2^127 to inf) and random codes, so every code appears
    rng = np.random.default_rng(39)
    raw = rng.integers(0, 256, size=(256, 17), dtype=np.uint8)
    raw[:, 0] = np.arange(256)
    raw = raw.reshape(8, 32 * 17)  # 8 rows of 32 blocks
    ours = quants.dequantize(raw, Q.MXFP4, (8, 32 * 32))
    with np.errstate(over="ignore"):  # gguf-py's own multiply overflows for e = 255
        theirs = ref.dequantize(raw, Q.MXFP4)
    np.testing.assert_array_equal(ours.view(np.uint32), theirs.view(np.uint32))


def test_mxfp4_by_hand():
    # e = 127: scale 1. Byte j holds code j % 16 (low nibble, value j) and 15 - j % 16 (high
    # nibble, value j + 16); e2m1 codes 0..7 are 0, .5, 1, 1.5, 2, 3, 4, 6 and 8..15 their negatives
    e2m1 = [0, 0.5, 1, 1.5, 2, 3, 4, 6, 0, -0.5, -1, -1.5, -2, -3, -4, -6]
    qs = np.array([j | ((15 - j) << 4) for j in range(16)], np.uint8)
    block = np.concatenate([np.array([127], np.uint8), qs])
    out = quants.dequantize(block, Q.MXFP4, (32,))
    np.testing.assert_array_equal(out, e2m1 + e2m1[::-1])
    block[0] = 130  # scale 2^3
    np.testing.assert_array_equal(quants.dequantize(block, Q.MXFP4, (32,)), 8 * out)
    assert quants.row_bytes(Q.MXFP4, 2880) == 90 * 17  # a GPT-OSS-20B expert row


def test_mxfp4_quantized_by_gguf_py_decodes_the_same():
    x = np.random.default_rng(5).normal(0, 1, size=(6, 96)).astype(np.float32)
    raw = ref.quantize(x, Q.MXFP4)
    ours = quants.dequantize(raw, Q.MXFP4, x.shape)
    np.testing.assert_array_equal(ours, ref.dequantize(raw, Q.MXFP4))
    # e2m1 keeps 1 mantissa bit: each value within half a step of its block's grid
    assert np.abs(ours - x).max() < 0.5 * np.abs(x).max()


def test_chunked_decode_matches_unchunked(monkeypatch):
    rng = np.random.default_rng(11)
    raw = random_blocks(Q.Q6_K, 10, rng)
    whole = quants.dequantize(raw, Q.Q6_K, (10 * 256,))
    monkeypatch.setattr(quants, "_CHUNK_BLOCKS", 3)  # 10 blocks in chunks of 3: a ragged tail
    np.testing.assert_array_equal(quants.dequantize(raw, Q.Q6_K, (10 * 256,)), whole)


def test_size_mismatch_and_unsupported_type_are_errors():
    with pytest.raises(ValueError, match="does not hold"):
        quants.dequantize(np.zeros(33, np.uint8), Q.Q8_0, (32,))
    with pytest.raises(ValueError, match="unsupported"):
        quants.dequantize(np.zeros(84, np.uint8), Q.Q2_K, (256,))
    assert quants.row_bytes(Q.Q4_1, 576) == 18 * 20
    with pytest.raises(ValueError, match="multiple of 32"):
        quants.row_bytes(Q.Q4_1, 100)
