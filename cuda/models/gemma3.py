"""The gemma3 block on the GPU: runtime/models/gemma3.py's function (llama.cpp's gemma3 graph),
the sequence decision 0012 lays out.

    q | k | v = qkv(rmsnorm(x) * attn_norm);  q, k = per-head rmsnorm * q_norm, k_norm; rope
    x += rmsnorm(o(attention)) * post_attention_norm      (layer i's window, table, 1/sqrt(256))
    x += rmsnorm(down(gelu_tanh(gate) * up)) * post_ffw_norm,  gate | up of rmsnorm(x) * ffn_norm

The embedding scale, the window and rope base of each layer, the score scale, the q/k norms and
the activation come from the config; this module only orders the steps. A projection's output
goes to act.xn (d_model wide) before its post-norm joins the residual. Decode: 7 launches per
layer (normed q|k|v, fused attention with the q/k norms, o, post-norm add, normed gate|up with
GELU, down, post-norm add). Prefill: each post-norm add also norms the residual for the next
projection (ffn_norm, then the next layer's attn_norm) in the same launch, so only layer 0 runs
an RMSNorm of its own; the last layer's needs none (the head norms its row itself).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cuda.forward import Forward
    from cuda.weights import LayerWeights


def decode_layer(f: Forward, i: int, lw: LayerWeights, splits: int) -> None:
    y = f.b["act.xn"]
    f.norm_qkv(lw, 1)
    f.attend_decode(i, lw, splits)
    f.product(lw.attn_output, f.b["act.attn"], y, 1, accumulate=False)
    f.post_norm(y, lw.post_attn_norm, 1)
    f.norm_ffn(lw, 1)
    f.product(lw.down, f.b["act.h"], y, 1, accumulate=False)
    f.post_norm(y, lw.post_ffn_norm, 1)


def prefill_layer(f: Forward, i: int, lw: LayerWeights, n: int) -> None:
    xn, layers = f.b["act.xn"], f.w.layers
    if i == 0:  # later layers find their input normed by the previous layer's last launch
        f.rms_norm(f.b["act.x"], lw.attn_norm, xn, n)
    f.qkv(lw, n)
    f.rope_kv_write(i, lw, n)
    f.attend_prefill(i, n)
    f.product(lw.attn_output, f.b["act.attn"], xn, n, accumulate=False)
    f.post_norm(xn, lw.post_attn_norm, n, w_next=lw.ffn_norm)
    f.ffn(lw, n)
    f.product(lw.down, f.b["act.h"], xn, n, accumulate=False)
    f.post_norm(
        xn, lw.post_ffn_norm, n, w_next=layers[i + 1].attn_norm if i + 1 < len(layers) else None
    )
