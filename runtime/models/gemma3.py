"""The gemma3 block: its weight plan, its config keys and its numpy forward pass.

Follows llama.cpp's gemma3 graph (llm_build_gemma3_iswa):

    x = token_embd[ids] * sqrt(d_model)
    per layer:  q|k|v = qkv(rmsnorm(x)); q, k = rmsnorm_per_head(q, k); rope (NEOX) on q, k
                x += rmsnorm(attn_output(attention(q, k, v)), post_attention_norm)
                x += rmsnorm(down(gelu_tanh(gate) * up), post_ffw_norm)
    logits = rmsnorm(x, output_norm) @ token_embd.T   (tied; no soft-capping in gemma3)

Layer i is a sliding-window layer iff i % 6 < 5: a 512-token window
(`gemma3.attention.sliding_window`) and rope base 10,000; the others attend to the whole
context with `gemma3.rope.freq_base`. Scores are scaled by 1/sqrt(head_dim) (head_dim =
`attention.key_length`, 256, not d_model / n_heads). GGUF's gemma norm weights already hold
the +1 of Gemma's RMSNorm, so the norms are the plain ones.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np

from runtime.models import slots
from runtime.models.hparams import Keys
from runtime.models.plan import WeightPlan
from runtime.numpy_layers import apply_rope, glu, linear, rms_norm, split_heads

if TYPE_CHECKING:
    from runtime.numpy_engine import LayerPass

SLIDING_PATTERN = 6  # layer i slides iff i % 6 < 5 (llama.cpp: set_swa_pattern(6))
SLIDING_ROPE_BASE = 10000.0  # llama.cpp's rope_freq_base_train_swa for gemma3
GEMMA3_27B_LAYERS = 62  # llama.cpp scales 27B's scores by 1/sqrt(d_model / n_heads) instead


def plan() -> WeightPlan:
    return WeightPlan(
        (
            slots.token_embd(),
            slots.attn_norm(),
            slots.qkv(fused=False),
            slots.layer_vector("q_norm", "attn_q_norm", lambda c: (c.head_dim,)),
            slots.layer_vector("k_norm", "attn_k_norm", lambda c: (c.head_dim,)),
            slots.attn_output(),
            slots.layer_vector("post_attn_norm", "post_attention_norm", lambda c: (c.d_model,)),
            slots.ffn_norm(),
            slots.gate_up(fused=False),
            slots.down(),
            slots.layer_vector("post_ffn_norm", "post_ffw_norm", lambda c: (c.d_model,)),
            slots.output_norm(),
            slots.output(),
        )
    )


def hparams(keys: Keys, fields: dict[str, Any]) -> dict[str, Any]:
    """gemma3's config keys: the sliding window and what follows from the family."""
    window = keys.int("attention.sliding_window")
    sliding = [i % SLIDING_PATTERN < SLIDING_PATTERN - 1 for i in range(fields["n_layers"])]
    scale_dim = fields["head_dim"]
    if fields["n_layers"] == GEMMA3_27B_LAYERS:
        scale_dim = fields["d_model"] // fields["n_heads"]
    return dict(
        attn_scale=1.0 / math.sqrt(scale_dim),
        embed_scale=math.sqrt(fields["d_model"]),
        layer_rope_base=tuple(SLIDING_ROPE_BASE if s else fields["rope_base"] for s in sliding),
        layer_window=tuple(window if s else 0 for s in sliding),
        qk_norm=True,
        post_norms=True,
        ffn_act="gelu_tanh",
    )


def forward_layer(p: LayerPass, x: np.ndarray) -> None:
    """One layer over x (T, d_model), in place."""
    c, w, eps = p.config, p.w, p.config.norm_eps
    h = rms_norm(x, w["attn_norm"], eps)  # (T, d_model)
    q, k, v = split_heads(linear(h, w["qkv"]), c.n_heads, c.n_kv_heads, c.head_dim)
    q = rms_norm(q, w["q_norm"], eps)  # (T, H, D): per head, before the rotation
    k = rms_norm(k, w["k_norm"], eps)  # (T, KV, D)
    apply_rope(q, p.cos, p.sin, c.rope_style)
    apply_rope(k, p.cos, p.sin, c.rope_style)
    x += rms_norm(linear(p.attend(q, k, v), w["attn_output"]), w["post_attn_norm"], eps)
    h = rms_norm(x, w["ffn_norm"], eps)
    y = linear(glu(linear(h, w["gate_up"]), c.d_ff, c.ffn_act), w["down"])  # (T, d_model)
    x += rms_norm(y, w["post_ffn_norm"], eps)
