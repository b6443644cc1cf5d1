"""The hyperparameters of a loaded model, independent of the file format and the backend."""

from __future__ import annotations

import attrs


@attrs.frozen
class ModelConfig:
    arch: str  # "llama", later "qwen2", "phi3"
    n_layers: int
    d_model: int  # embedding width
    n_heads: int
    n_kv_heads: int  # grouped-query attention: n_heads % n_kv_heads == 0
    head_dim: int  # d_model // n_heads for every architecture we support
    d_ff: int  # feed-forward hidden width
    vocab_size: int
    context_length: int  # the model's trained maximum
    rope_base: float
    rope_dim: int  # rotated dimensions per head (== head_dim for llama)
    rope_style: str  # "norm": rotate adjacent pairs (GGML mode 0); "neox": rotate halves
    norm_eps: float
    tied_output: bool  # output head reuses token_embd.weight
    qkv_bias: bool

    @property
    def kv_dim(self) -> int:
        return self.n_kv_heads * self.head_dim
