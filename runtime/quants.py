"""Our own numpy dequantization of the GGML weight types the worker supports.

Block layouts follow ggml (`ggml-common.h`); each block is `type_size` bytes that decode to
`block_size` consecutive values of a row. Rows are always whole blocks. The CUDA kernels decode
the same layouts (all but MXFP4 so far, which the CUDA load check refuses), and their tests
compare against these functions, which in turn are tested against `gguf.quants.dequantize`.

Big tensors are decoded in chunks of rows so the temporaries stay in cache-sized pieces and the
peak memory is the output plus a few MB.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from gguf import GGMLQuantizationType as Q

QK = 32  # values per block of the simple types
QK_K = 256  # values per super-block of the k-quants

#: qtype -> (values per block, bytes per block)
BLOCK_SIZES: dict[Q, tuple[int, int]] = {
    Q.F32: (1, 4),
    Q.F16: (1, 2),
    Q.Q8_0: (QK, 2 + QK),
    Q.Q4_0: (QK, 2 + QK // 2),
    Q.Q4_1: (QK, 4 + QK // 2),
    Q.Q5_0: (QK, 2 + 4 + QK // 2),
    Q.Q4_K: (QK_K, 4 + 12 + QK_K // 2),
    Q.Q6_K: (QK_K, QK_K // 2 + QK_K // 4 + QK_K // 16 + 2),
    Q.MXFP4: (QK, 1 + QK // 2),
}
SUPPORTED = frozenset(BLOCK_SIZES)

_CHUNK_BLOCKS = 1 << 14  # blocks decoded per step (~0.5M values for 32-value blocks)


def _f16(b: np.ndarray) -> np.ndarray:
    """(n, 2) uint8 -> (n, 1) float32 read as little-endian fp16."""
    return np.ascontiguousarray(b).view("<f2").astype(np.float32)


def _nibbles(qs: np.ndarray) -> np.ndarray:
    """(n, 16) uint8 -> (n, 32) uint8: low nibbles are values 0..15, high nibbles 16..31."""
    return np.concatenate([qs & 0x0F, qs >> 4], axis=1)


def _q8_0(b: np.ndarray) -> np.ndarray:  # b: (n, 34) -> (n, 32)
    return _f16(b[:, :2]) * b[:, 2:].view(np.int8).astype(np.float32)


def _q4_0(b: np.ndarray) -> np.ndarray:  # b: (n, 18) -> (n, 32)
    q = _nibbles(b[:, 2:]).astype(np.int8) - np.int8(8)
    return _f16(b[:, :2]) * q.astype(np.float32)


def _q4_1(b: np.ndarray) -> np.ndarray:  # b: (n, 20) -> (n, 32)
    q = _nibbles(b[:, 4:]).astype(np.float32)
    return _f16(b[:, :2]) * q + _f16(b[:, 2:4])


_BIT = np.arange(32, dtype=np.uint32)


def _q5_0(b: np.ndarray) -> np.ndarray:  # b: (n, 22) -> (n, 32)
    # qh bit j is the fifth bit of value j (values 0..15 from low nibbles, 16..31 from high)
    qh = np.ascontiguousarray(b[:, 2:6]).view("<u4")  # (n, 1)
    hi = ((qh >> _BIT) & 1).astype(np.uint8) << 4  # (n, 32)
    q = (_nibbles(b[:, 6:]) | hi).astype(np.int8) - np.int8(16)
    return _f16(b[:, :2]) * q.astype(np.float32)


def _q4_k_scales(s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(n, 12) packed 6-bit scales/mins -> two (n, 8) uint8 arrays (ggml get_scale_min_k4)."""
    lo, mid, top = s[:, 0:4], s[:, 4:8], s[:, 8:12]
    sc = np.concatenate([lo & 63, (top & 0x0F) | ((lo >> 6) << 4)], axis=1)
    mn = np.concatenate([mid & 63, (top >> 4) | ((mid >> 6) << 4)], axis=1)
    return sc, mn


def _q4_k(b: np.ndarray) -> np.ndarray:  # b: (n, 144) -> (n, 256)
    n = b.shape[0]
    d, dmin = _f16(b[:, 0:2]), _f16(b[:, 2:4])  # (n, 1)
    sc, mn = _q4_k_scales(b[:, 4:16])  # (n, 8)
    # qs: 4 chunks of 32 bytes; chunk c gives sub-block 2c (low nibbles) and 2c+1 (high)
    qs = b[:, 16:].reshape(n, 4, 1, 32)
    q = (qs >> np.array([0, 4], np.uint8).reshape(1, 1, 2, 1)) & 0x0F  # (n, 4, 2, 32)
    q = q.reshape(n, 8, 32).astype(np.float32)
    scale = (d * sc.astype(np.float32))[:, :, None]  # (n, 8, 1)
    off = (dmin * mn.astype(np.float32))[:, :, None]
    return (scale * q - off).reshape(n, QK_K)


def _q6_k(b: np.ndarray) -> np.ndarray:  # b: (n, 210) -> (n, 256)
    n = b.shape[0]
    ql = b[:, 0:128].reshape(n, 2, 1, 64)  # two halves of 128 values
    qh = b[:, 128:192].reshape(n, 2, 1, 32)
    sc = b[:, 192:208].view(np.int8).astype(np.float32)  # (n, 16): one per 16 values
    d = _f16(b[:, 208:210])  # (n, 1)
    # In each half: values 0..63 take ql's low nibbles, 64..127 its high nibbles; the two
    # high bits of value 32*k + l sit at bit 2k of qh[l].
    lo = (ql >> np.array([0, 4], np.uint8).reshape(1, 1, 2, 1)) & 0x0F  # (n, 2, 2, 64)
    lo = lo.reshape(n, 2, 4, 32)
    hi = (qh >> np.array([0, 2, 4, 6], np.uint8).reshape(1, 1, 4, 1)) & 0x03  # (n, 2, 4, 32)
    q = (lo | (hi << 4)).astype(np.int8) - np.int8(32)
    q = q.reshape(n, 16, 16).astype(np.float32)
    return ((d * sc)[:, :, None] * q).reshape(n, QK_K)


#: MXFP4's e2m1 code -> value, doubled as ggml keeps them (kvalues_mxfp4): code bit 3 is the
#: sign, so 8 ("-0") decodes to +0 as in ggml
_E2M1_DOUBLED = np.array([0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12], np.float32)


def _mxfp4(b: np.ndarray) -> np.ndarray:  # b: (n, 17) -> (n, 32)
    # OCP MX block: an E8M0 scale 2^(e-127), then 32 e2m1 codes as nibbles (low nibbles values
    # 0..15, high nibbles 16..31). ggml multiplies the doubled codes by half the scale,
    # 2^(e-128); every e, 0 and 255 included, is that power of two (ggml_e8m0_to_fp32_half).
    half_scale = np.ldexp(np.float32(1), b[:, :1].astype(np.int32) - 128)  # (n, 1) float32
    return half_scale * _E2M1_DOUBLED[_nibbles(b[:, 1:])]


_DECODERS: dict[Q, Callable[[np.ndarray], np.ndarray]] = {
    Q.Q8_0: _q8_0,
    Q.Q4_0: _q4_0,
    Q.Q4_1: _q4_1,
    Q.Q5_0: _q5_0,
    Q.Q4_K: _q4_k,
    Q.Q6_K: _q6_k,
    Q.MXFP4: _mxfp4,
}


def row_bytes(qtype: Q, n_cols: int) -> int:
    """Bytes of one row of `n_cols` values; ValueError if the row is not whole blocks."""
    block, size = BLOCK_SIZES[qtype]
    if n_cols % block:
        raise ValueError(f"{qtype.name} rows need a multiple of {block} values, got {n_cols}")
    return n_cols // block * size


def dequantize(
    raw: np.ndarray, qtype: Q, shape: tuple[int, ...], out: np.ndarray | None = None
) -> np.ndarray:
    """Decode `raw` (uint8 bytes of the tensor, any shape) to a float32 array of `shape`.

    `out`: C-contiguous float32 with as many values to decode into (say the rows of a larger
    array: no temporary); it is returned, reshaped to `shape`."""
    qtype = Q(qtype)
    if qtype not in BLOCK_SIZES:
        raise ValueError(f"unsupported tensor type {qtype.name}")
    shape = tuple(int(s) for s in shape)
    n_values = int(np.prod(shape, dtype=np.int64))
    block, size = BLOCK_SIZES[qtype]
    flat = np.asarray(raw).reshape(-1)
    if flat.dtype != np.uint8:
        flat = flat.view(np.uint8)
    if n_values % block or flat.size != n_values // block * size:
        raise ValueError(
            f"{qtype.name} data of {flat.size} bytes does not hold a tensor of shape {shape}"
        )
    if out is not None and (
        out.dtype != np.float32 or out.size != n_values or not out.flags.c_contiguous
    ):
        raise ValueError(f"out must hold {n_values} contiguous float32 values")
    if qtype in (Q.F32, Q.F16):
        values = flat.view("<f4" if qtype == Q.F32 else "<f2")
        if out is None:
            return values.astype(np.float32).reshape(shape)
        out.reshape(-1)[:] = values
        return out.reshape(shape)
    decode = _DECODERS[qtype]
    blocks = flat.reshape(-1, size)  # (n_blocks, type_size)
    if out is None:
        out = np.empty((blocks.shape[0], block), dtype=np.float32)
    out = out.reshape(blocks.shape[0], block)  # (n_blocks, block_size)
    # a damaged file may hold inf/nan scales: decode them to inf/nan quietly, as ggml does
    with np.errstate(all="ignore"):
        for start in range(0, blocks.shape[0], _CHUNK_BLOCKS):
            stop = start + _CHUNK_BLOCKS
            out[start:stop] = decode(blocks[start:stop])
    return out.reshape(shape)
