"""The llama block (llama, qwen2, phi3): its weight plan and its numpy forward pass.

    x += attn_output(attention(rope(q), rope(k), v))   with q|k|v = qkv(rmsnorm(x)) (+ bias)
    x += down(act(gate) * up)                           with gate|up = gate_up(rmsnorm(x))

The three families differ only in switches the plan and the config carry: a q/k/v bias (qwen2
always, llama optionally), q|k|v and gate|up stored fused (phi3) or apart, the rope style.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from runtime.models import slots
from runtime.models.hparams import Keys
from runtime.models.plan import WeightPlan
from runtime.numpy_layers import apply_rope, glu, linear, rms_norm, split_heads

if TYPE_CHECKING:
    from runtime.numpy_engine import LayerPass


def plan(*, qkv_bias: str, fused: bool = False) -> WeightPlan:
    """qkv_bias: "required" | "optional" | "none"; fused: phi3's attn_qkv and gate|up matrix."""
    layer = [
        slots.attn_norm(),
        slots.qkv(fused=fused),
        slots.attn_output(),
        slots.ffn_norm(),
        slots.gate_up(fused=fused),
        slots.down(),
    ]
    if qkv_bias != "none":
        layer.insert(2, slots.qkv_bias(required=qkv_bias == "required"))
    return WeightPlan(
        (slots.token_embd(), *layer, slots.output_norm(), slots.output()),
    )


def phi3_hparams(keys: Keys, fields: dict[str, Any]) -> dict[str, Any]:
    """phi3's `attention.sliding_window` (2047 in Phi-3-mini-4k): transformers masks every layer
    with it; llama.cpp ignores it ("Phi SWA is currently disabled"). The two agree on contexts
    up to the window; beyond it we follow transformers, which defines the model (decision 0013)."""
    window = keys.int("attention.sliding_window", 0)
    return {"layer_window": (window,) * fields["n_layers"]} if window else {}


def forward_layer(p: LayerPass, x: np.ndarray) -> None:
    """One layer over x (T, d_model), in place."""
    c, w = p.config, p.w
    h = rms_norm(x, w["attn_norm"], c.norm_eps)  # (T, d_model)
    qkv = linear(h, w["qkv"])  # (T, q_dim + 2 kv_dim)
    if c.qkv_bias:
        qkv += w["qkv_bias"]
    q, k, v = split_heads(qkv, c.n_heads, c.n_kv_heads, c.head_dim)  # views into qkv
    apply_rope(q, p.cos, p.sin, c.rope_style)
    apply_rope(k, p.cos, p.sin, c.rope_style)
    x += linear(p.attend(q, k, v), w["attn_output"])
    h = rms_norm(x, w["ffn_norm"], c.norm_eps)
    x += linear(glu(linear(h, w["gate_up"]), c.d_ff, c.ffn_act), w["down"])
