"""Sampling parameters and the one sampling chain every backend implements.

(Skeleton: the chain itself lands with the reference engine.)
"""

from __future__ import annotations

import attrs


@attrs.frozen
class SamplingParams:
    temperature: float = 1.0  # 0.0 = greedy (argmax), up to 2.0
    top_k: int = 0  # 0 = off
    top_p: float = 1.0  # (0, 1]; 1 = off
    min_p: float = 0.0  # [0, 1]; 0 = off
    repetition_penalty: float = 1.0  # (0, 2]; 1 = off
    seed: int = 0  # 0 .. 2**64-1
