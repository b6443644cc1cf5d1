"""Which rows of the output head are no token: padding that sampling must never pick.

Qwen2.5's head has 151,936 rows for 151,665 real tokens; the file lists the rest as
`[PAD151665]`... with token type UNUSED. A model can also have more logits than listed tokens.
Neither kind of id can be decoded into text, so every backend masks them out of sampling (the
numpy engine through `sample_from_logits(..., banned=)`; the CUDA engine reads the same ids).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

UNUSED = 5  # llama.cpp's LLAMA_TOKEN_TYPE_UNUSED (runtime.tokenizer.TokenType.UNUSED)


def unsampleable_ids(metadata: Mapping[str, Any], n_logits: int) -> np.ndarray:
    """Sorted int64 ids in [0, n_logits): tokens of type UNUSED, and ids past the token list."""
    tokens = metadata.get("tokenizer.ggml.tokens")
    types = metadata.get("tokenizer.ggml.token_type")
    n_tokens = len(tokens) if isinstance(tokens, list) else n_logits
    banned = np.arange(min(n_tokens, n_logits), n_logits, dtype=np.int64)
    if isinstance(types, list) and types:
        t = np.asarray(types[:n_logits], dtype=np.int64)
        banned = np.union1d(np.flatnonzero(t == UNUSED), banned)
    return banned.astype(np.int64)


def sampled_prefix(banned: np.ndarray, n_logits: int) -> int | None:
    """n when the banned ids are exactly n .. n_logits-1 (Qwen's case: a sampler may then read
    only the first n logits), else None (the ids must be masked one by one)."""
    n = n_logits - banned.size
    if banned.size == 0 or (banned[0] == n and banned[-1] == n_logits - 1):
        return n
    return None
