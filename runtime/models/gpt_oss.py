"""The gpt-oss block: its weight plan, its config keys and its numpy forward pass.

Follows transformers' `modeling_gpt_oss.py` (decision 0013 lists where llama.cpp differs):

    per layer:  q|k|v = qkv(rmsnorm(x)) + bias; rope (NEOX, YaRN-scaled) on q, k
                x += attn_output(attention with a sink logit per head) + bias
                h = rmsnorm(x, post_attention_norm)
                x += sum over the top-k experts e of softmax(top-k router logits)_e * expert_e(h)
    expert_e(h) = down_e((clip(up_e h + b, -7, 7) + 1) * g * sigmoid(1.702 g)) + b_down,
                  g = min(gate_e h + b, 7)

Layers 0, 2, 4, ... attend within `attention.sliding_window` keys, the others to the whole
context. Heads are `attention.key_length` (64) wide whatever d_model is; scores are scaled by
1/sqrt(64). YaRN's correction range is not rounded (`truncate: false` in the model's config;
the GGUF has no key for it). The SwiGLU constants are not in the file either.

The numpy engine holds the expert tensors as the file's quantized bytes (MXFP4 in the real
files) and decodes only the experts a pass routes to, each once per pass: the real 20B model's
experts are 12 GB as MXFP4 and would be ~80 GB in fp32 (`LayerExperts`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from runtime.errors import ModelLoadError
from runtime.model_config import MixtureOfExperts, YarnScaling
from runtime.models import slots
from runtime.models.hparams import Keys
from runtime.models.plan import WeightPlan, experts, matrix, vector
from runtime.numpy_layers import apply_rope, rms_norm, split_heads

if TYPE_CHECKING:
    from runtime.numpy_engine import LayerPass

SLIDING_PATTERN = 2  # layer i slides iff i % 2 == 0 (transformers' layer_types; llama.cpp's)
SWIGLU_ALPHA = 1.702  # GptOssExperts.alpha
SWIGLU_LIMIT = 7.0  # GptOssExperts.limit
YARN_TRUNCATE = False  # the real config's rope_scaling.truncate


def plan() -> WeightPlan:
    e = _n_experts
    return WeightPlan(
        (
            slots.token_embd(),
            slots.attn_norm(),
            slots.qkv(fused=False),
            slots.qkv_bias(required=True),
            vector("attn_sinks", "blk.{i}.attn_sinks", ("attn_sinks", "blk.{i}.attn_sinks.weight",
                                                         lambda c: (c.n_heads,))),
            slots.attn_output(),
            _vec("attn_output_bias", "attn_output", lambda c: (c.d_model,)),
            # gpt-oss names the norm before the FFN post_attention_norm
            vector("ffn_norm", "blk.{i}.ffn_norm",
                   ("post_attention_norm", "blk.{i}.post_attention_norm.weight", _d_model)),
            matrix("router", "blk.{i}.ffn_gate_inp",
                   ("ffn_gate_inp", "blk.{i}.ffn_gate_inp.weight", lambda c: (e(c), c.d_model))),
            _vec("router_bias", "ffn_gate_inp", lambda c: (e(c),)),
            experts("gate_exps", "blk.{i}.ffn_gate_exps",
                    ("ffn_gate_exps", "blk.{i}.ffn_gate_exps.weight", _to_expert_ff)),
            experts("up_exps", "blk.{i}.ffn_up_exps",
                    ("ffn_up_exps", "blk.{i}.ffn_up_exps.weight", _to_expert_ff)),
            experts("down_exps", "blk.{i}.ffn_down_exps",
                    ("ffn_down_exps", "blk.{i}.ffn_down_exps.weight",
                     lambda c: (e(c), c.d_model, c.moe.d_ff))),
            _vec("gate_exps_bias", "ffn_gate_exps", lambda c: (e(c), c.moe.d_ff)),
            _vec("up_exps_bias", "ffn_up_exps", lambda c: (e(c), c.moe.d_ff)),
            _vec("down_exps_bias", "ffn_down_exps", lambda c: (e(c), c.d_model)),
            slots.output_norm(),
            slots.output(),
        )
    )  # fmt: skip


def _vec(name: str, tensor: str, shape):
    """The bias `blk.{i}.<tensor>.bias` (role `<tensor>_bias`)."""
    return vector(name, f"blk.{{i}}.{name}", (f"{tensor}_bias", f"blk.{{i}}.{tensor}.bias", shape))


def _n_experts(c) -> int:
    return c.moe.n_experts


def _d_model(c):
    return (c.d_model,)


def _to_expert_ff(c):
    return (c.moe.n_experts, c.moe.d_ff, c.d_model)


def hparams(keys: Keys, fields: dict[str, Any]) -> dict[str, Any]:
    """gpt-oss's config keys: experts, the sliding window, YaRN; the family's constants."""
    n_experts = keys.int("expert_count")
    top_k = keys.int("expert_used_count")
    if top_k > n_experts:
        raise ModelLoadError(
            f"{keys.arch}.expert_used_count {top_k} exceeds {keys.arch}.expert_count {n_experts}"
        )
    window = keys.int("attention.sliding_window")
    sliding = [i % SLIDING_PATTERN == 0 for i in range(fields["n_layers"])]
    scaling = keys.metadata.get(f"{keys.arch}.rope.scaling.type", "none")
    yarn = None
    if scaling == "yarn":
        yarn = YarnScaling(
            factor=keys.float("rope.scaling.factor"),
            original_context=keys.int("rope.scaling.original_context_length"),
            beta_fast=keys.float("rope.scaling.yarn_beta_fast", 32.0),
            beta_slow=keys.float("rope.scaling.yarn_beta_slow", 1.0),
            truncate=YARN_TRUNCATE,
        )
    return dict(
        layer_window=tuple(window if s else 0 for s in sliding),
        rope_yarn=yarn,
        attn_sinks=True,
        moe=MixtureOfExperts(
            n_experts=n_experts,
            top_k=top_k,
            d_ff=keys.int("expert_feed_forward_length", fields["d_ff"]),
            alpha=SWIGLU_ALPHA,
            limit=SWIGLU_LIMIT,
        ),
    )


def forward_layer(p: LayerPass, x: np.ndarray) -> None:
    """One layer over x (T, d_model), in place."""
    c, w, eps = p.config, p.w, p.config.norm_eps
    h = rms_norm(x, w["attn_norm"], eps)  # (T, d_model)
    qkv = h @ w["qkv"].T + w["qkv_bias"]  # (T, q_dim + 2 kv_dim)
    q, k, v = split_heads(qkv, c.n_heads, c.n_kv_heads, c.head_dim)
    apply_rope(q, p.cos, p.sin, c.rope_style)
    apply_rope(k, p.cos, p.sin, c.rope_style)
    x += p.attend(q, k, v, sinks=w["attn_sinks"]) @ w["attn_output"].T + w["attn_output_bias"]
    h = rms_norm(x, w["ffn_norm"], eps)
    x += moe_ffn(h, w, c.moe)


def route(logits: np.ndarray, top_k: int) -> tuple[np.ndarray, np.ndarray]:
    """(T, E) router logits -> the chosen experts (T, k), largest logit first (ties: the lower
    index), and their weights (T, k): the softmax over the k chosen logits."""
    chosen = np.argsort(-logits, axis=-1, kind="stable")[:, :top_k]  # (T, k)
    top = np.take_along_axis(logits, chosen, axis=-1)
    weights = np.exp(top - top[:, :1])  # the first is the largest
    weights /= weights.sum(axis=-1, keepdims=True)
    return chosen, weights


def clamped_swiglu(gate: np.ndarray, up: np.ndarray, moe: MixtureOfExperts) -> np.ndarray:
    """gpt-oss's activation: (clip(up, -limit, limit) + 1) * g * sigmoid(alpha g), g = min(gate,
    limit) (no lower clamp on the gate)."""
    g = np.minimum(gate, np.float32(moe.limit))
    u = np.clip(up, np.float32(-moe.limit), np.float32(moe.limit))
    with np.errstate(over="ignore"):  # exp overflows for very negative g: the product is -0
        glu = g / (np.float32(1.0) + np.exp(np.float32(-moe.alpha) * g))
    return (u + np.float32(1.0)) * glu


def moe_ffn(h: np.ndarray, w: dict, moe: MixtureOfExperts) -> np.ndarray:
    """The routed FFN of h (T, d_model): each expert any token chose is decoded once and run on
    the tokens that chose it; a token's experts are summed in ascending expert order."""
    chosen, weights = route(h @ w["router"].T + w["router_bias"], moe.top_k)
    out = np.zeros_like(h)
    for e in np.unique(chosen):
        tokens, slot = np.nonzero(chosen == e)  # each token chooses an expert at most once
        x = h[tokens]  # (n, d_model)
        gate = x @ w["gate_exps"].matrix(e).T + w["gate_exps_bias"][e]
        up = x @ w["up_exps"].matrix(e).T + w["up_exps_bias"][e]
        y = clamped_swiglu(gate, up, moe) @ w["down_exps"].matrix(e).T + w["down_exps_bias"][e]
        out[tokens] += weights[tokens, slot][:, None] * y
    return out
