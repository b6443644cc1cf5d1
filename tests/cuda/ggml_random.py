"""Random but valid GGML weight blocks for the kernel tests (shared by the GPU and host tests)."""

from __future__ import annotations

import numpy as np
from gguf import GGML_QUANT_SIZES
from gguf import GGMLQuantizationType as Q

TYPES = [Q.F32, Q.F16, Q.Q8_0, Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q4_K, Q.Q6_K, Q.MXFP4]
#: byte offsets of the fp16 scale fields in a block (d; and m / dmin where the type has one)
SCALE_FIELDS = {
    Q.Q8_0: (0,),
    Q.Q4_0: (0,),
    Q.Q4_1: (0, 2),
    Q.Q5_0: (0,),
    Q.Q4_K: (0, 2),
    Q.Q6_K: (208,),
}


#: MXFP4's E8M0 scale byte e (2^(e - 128)): values of magnitude ~2^-9 .. 2^4, like the fp16
#: scales above (the full range, denormals and infinities included, is the host test's)
MXFP4_EXPONENTS = (118, 131)


def random_weights(qtype: Q, rows: int, cols: int, rng: np.random.Generator) -> np.ndarray:
    """(rows, row_bytes) uint8: valid GGML blocks with random quants and finite scales."""
    if qtype == Q.F32:
        return rng.standard_normal((rows, cols)).astype("<f4").view(np.uint8)
    if qtype == Q.F16:
        return rng.standard_normal((rows, cols)).astype("<f2").view(np.uint8)
    qk, size = GGML_QUANT_SIZES[qtype]
    nb = cols // qk
    raw = rng.integers(0, 256, size=(rows, nb, size), dtype=np.uint8)
    if qtype == Q.MXFP4:
        raw[:, :, 0] = rng.integers(*MXFP4_EXPONENTS, size=(rows, nb))
    for off in SCALE_FIELDS.get(qtype, ()):
        scale = rng.uniform(0.5, 1.5, (rows, nb)) * rng.choice([-1.0, 1.0], (rows, nb)) * 0.02
        raw[:, :, off : off + 2] = scale.astype("<f2").view(np.uint8).reshape(rows, nb, 2)
    return raw.reshape(rows, nb * size)


def block_cols(qtype: Q) -> int:
    """The smallest legal row width of the kernels: the block (8 for plain floats)."""
    return 8 if qtype in (Q.F32, Q.F16) else GGML_QUANT_SIZES[qtype][0]
