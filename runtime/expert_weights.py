"""Expert matrices held as the file's quantized bytes and decoded one expert at a time.

A mixture-of-experts layer reads only the experts its router picks, so the numpy engine keeps
each `experts` slot (plan kind, (n_experts, out, in)) as the memory-mapped tensor and
dequantizes an expert's matrix when a pass routes a token to it. Memory stays at the file's
size (gpt-oss-20b: 12 GB of MXFP4 rather than ~80 GB of fp32); the price is one decode per
expert and pass, which the reference engine pays gladly (decision 0013).
"""

from __future__ import annotations

import numpy as np
from gguf import GGMLQuantizationType

from runtime import quants


class LayerExperts:
    """One layer's (n_experts, out, in) expert tensor: raw bytes (n_experts, out, row_bytes)."""

    def __init__(self, raw: np.ndarray, qtype: GGMLQuantizationType, shape: tuple[int, ...]):
        if len(shape) != 3 or raw.shape[:2] != shape[:2]:
            raise ValueError(f"expert bytes {raw.shape} do not hold a tensor of shape {shape}")
        self.raw, self.qtype, self.shape = raw, qtype, shape

    @property
    def n_experts(self) -> int:
        return self.shape[0]

    def matrix(self, expert: int) -> np.ndarray:
        """Expert `expert`'s (out, in) matrix in fp32, freshly decoded."""
        return quants.dequantize(self.raw[int(expert)], self.qtype, self.shape[1:])

    def dequantize(self) -> np.ndarray:
        """Every expert, (n_experts, out, in) fp32 (tests; a real model's is far too big)."""
        return quants.dequantize(self.raw, self.qtype, self.shape)
