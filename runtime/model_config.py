"""The hyperparameters of a loaded model, independent of the file format and the backend.

Everything an engine needs to run a family's block is a value here, read from the metadata by the
family's seam (`runtime.models`): engines never branch on `arch`. Per-layer values (rope base,
sliding window) are tuples of length `n_layers`.
"""

from __future__ import annotations

import math

import attrs

ACTIVATIONS = ("silu", "gelu_tanh")  # the gated FFN's activation: act(gate) * up


@attrs.frozen
class YarnScaling:
    """YaRN rotary scaling (gpt-oss; transformers' `_compute_yarn_parameters`): frequencies
    between the two correction dimensions are blended from the plain ones and the plain ones
    divided by `factor`; cos and sin are both multiplied by 0.1 ln(factor) + 1.

    `truncate`: round the correction range to whole dimensions (llama.cpp always does; gpt-oss's
    config says false, and the GGUF has no key for it: a family constant, decision 0013)."""

    factor: float
    original_context: int
    beta_fast: float = 32.0
    beta_slow: float = 1.0
    truncate: bool = True

    @property
    def attention_factor(self) -> float:
        return 0.1 * math.log(self.factor) + 1.0 if self.factor > 1 else 1.0


@attrs.frozen
class MixtureOfExperts:
    """A routed FFN (gpt-oss): per token, the `top_k` experts of the largest router logits, their
    outputs weighted by the softmax of those k logits. Each expert is a gated FFN of width d_ff
    with gpt-oss's clamped SwiGLU: gate = min(gate, limit), up = clip(up, -limit, limit),
    out = (up + 1) * gate * sigmoid(alpha * gate) (constants of the family, not in the file)."""

    n_experts: int
    top_k: int
    d_ff: int
    alpha: float
    limit: float


@attrs.frozen
class ModelConfig:
    arch: str  # "llama", "qwen2", "phi3", "gemma3", "gpt-oss" (messages only: engines follow
    # the fields)
    n_layers: int
    d_model: int  # embedding width
    n_heads: int
    n_kv_heads: int  # grouped-query attention: n_heads % n_kv_heads == 0
    head_dim: int  # `*.attention.key_length` where given (gemma3: 256), else d_model // n_heads
    d_ff: int  # feed-forward hidden width
    vocab_size: int  # rows of the output head (logits per position)
    context_length: int  # the model's trained maximum
    rope_base: float  # `*.rope.freq_base`: the base of every layer without its own
    rope_dim: int  # rotated dimensions per head (== head_dim for every family here)
    rope_style: str  # "norm": rotate adjacent pairs (GGML mode 0); "neox": rotate halves
    norm_eps: float
    tied_output: bool  # output head reuses token_embd.weight
    qkv_bias: bool  # q, k and v have a bias (qwen2)
    # -- what gemma3 adds; the defaults are the llama family's -----------------------------------
    attn_scale: float = attrs.field()  # scores = q.k * attn_scale; 1/sqrt(head_dim)
    embed_scale: float = 1.0  # token embeddings are multiplied by this (gemma: sqrt(d_model))
    #: rope base of each layer (gemma3's sliding layers use 10,000); default rope_base everywhere
    layer_rope_base: tuple[float, ...] = attrs.field()
    #: attention window of each layer: a key at p is visible from a query at t iff
    #: 0 <= t - p < window; 0 = the whole causal context
    layer_window: tuple[int, ...] = attrs.field()
    qk_norm: bool = False  # per-head RMSNorm of q and k before the rotation (attn_q/k_norm)
    post_norms: bool = False  # RMSNorm of the attention and FFN outputs before each residual add
    ffn_act: str = attrs.field(default="silu", validator=attrs.validators.in_(ACTIVATIONS))
    # -- what gpt-oss adds --------------------------------------------------------------------
    rope_yarn: YarnScaling | None = None  # YaRN-scaled rotary tables (every layer)
    attn_sinks: bool = False  # a learned per-head logit joins every softmax row (no value)
    moe: MixtureOfExperts | None = None  # the FFN is routed over experts (None: dense)

    @attn_scale.default
    def _default_scale(self) -> float:
        return 1.0 / math.sqrt(self.head_dim)

    @layer_rope_base.default
    def _default_bases(self) -> tuple[float, ...]:
        return (self.rope_base,) * self.n_layers

    @layer_window.default
    def _default_windows(self) -> tuple[int, ...]:
        return (0,) * self.n_layers

    @property
    def kv_dim(self) -> int:
        return self.n_kv_heads * self.head_dim

    @property
    def q_dim(self) -> int:
        """Width of the query projection: n_heads * head_dim (not d_model for gemma3)."""
        return self.n_heads * self.head_dim

    @property
    def rope_bases(self) -> tuple[float, ...]:
        """The distinct rope bases, in first-use order: one rotary table each."""
        return tuple(dict.fromkeys(self.layer_rope_base))
