"""The gpt-oss block on the GPU: runtime/models/gpt_oss.py's function (transformers' gpt_oss).

    q | k | v = qkv(rmsnorm(x) * attn_norm) + bias;  rope (NEOX, YaRN tables); sinks per head
    x += o(attention) + o_bias                       (layer i's window: 0, 2, ... slide)
    x += sum_j w_j * down_e(swiglu_clamped(gate_e xn + b, up_e xn + b)) + b_down,
         e = the top-k of router(xn) + bias, w = softmax over them,  xn = rmsnorm(x) * ffn_norm

The YaRN rotary table (scaled by its attention factor), the window, the 1/sqrt(64) score scale
and the clamp constants come from the config; the expert stacks stay the file's bytes (MXFP4),
decoded in the MoE kernels (cuda/moe_ops.py) for the chosen experts only. Decode is 7 launches
per layer: the normed q|k|v with its bias (segmented kernel), the fused attention with sinks,
o with its bias into the residual, the normed router with its bias, top-k, the chosen experts'
normed gate|up with the clamped SwiGLU, their weighted down products into the residual.
Prefill: the same with matrix products over the chunk and the norms as launches of their own;
the router's product runs in fp32 (no tensor cores), so fp16 rounding never changes a choice.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cuda.forward import Forward
    from cuda.weights import LayerWeights


def decode_layer(f: Forward, i: int, lw: LayerWeights, splits: int) -> None:
    f.norm_qkv(lw, 1)
    f.attend_decode(i, lw, splits)
    f.product(lw.attn_output, f.b["act.attn"], f.b["act.x"], 1, accumulate=True,
              bias=lw.attn_output_bias)  # fmt: skip
    moe_ffn(f, lw, 1)


def prefill_layer(f: Forward, i: int, lw: LayerWeights, n: int) -> None:
    f.norm_qkv(lw, n)
    f.rope_kv_write(i, lw, n)
    f.attend_prefill(i, n, sinks=lw.attn_sinks)
    f.product(lw.attn_output, f.b["act.attn"], f.b["act.x"], n, accumulate=True,
              bias=lw.attn_output_bias)  # fmt: skip
    moe_ffn(f, lw, n)


def moe_ffn(f: Forward, lw: LayerWeights, n: int) -> None:
    """act.x (n, d_model) += the routed experts of rmsnorm(act.x) * ffn_norm."""
    c, b, m, s = f.c, f.b, f.c.moe, f.stream
    r, pdl = lw.router, f.pdl and n == 1
    if n == 1 and f.fuse_norm:  # the norm fused into the router's and the experts' launches
        x, norm_w = b["act.x"], lw.ffn_norm
        f.q.matvec_seg(
            [(r.qtype, r.ptr, r.rows)], r.cols, x, b["moe.logits"], s, norm_w_ptr=norm_w,
            eps=c.norm_eps, bias_ptr=lw.router_bias, pdl=pdl,
        )  # fmt: skip
    else:
        x, norm_w = b["act.xn"], None
        f.rms_norm(b["act.x"], lw.ffn_norm, x, n)
        if n == 1:
            f.product(r, x, b["moe.logits"], 1, accumulate=False, bias=lw.router_bias)
        else:
            f.q.matmul(r.qtype, r.ptr, r.rows, r.cols, x, n, b["moe.logits"], s,
                       bias_ptr=lw.router_bias, tensor_cores=False)  # fmt: skip
    f.moe.topk(b["moe.logits"], n, m.n_experts, m.top_k, b["moe.ids"], b["moe.weights"], s,
               pdl=pdl)  # fmt: skip
    g, u, d = lw.gate_exps, lw.up_exps, lw.down_exps
    f.moe.gate_up(
        g.qtype, g.ptr, u.ptr, lw.gate_exps_bias, lw.up_exps_bias, m.d_ff, c.d_model, x, n,
        b["moe.ids"], m.top_k, b["moe.h"], s, alpha=m.alpha, limit=m.limit, norm_w=norm_w,
        eps=c.norm_eps, pdl=pdl,
    )  # fmt: skip
    f.moe.down(
        d.qtype, d.ptr, lw.down_exps_bias, c.d_model, m.d_ff, b["moe.h"], b["moe.ids"],
        b["moe.weights"], m.top_k, n, b["act.x"], s, accumulate=True, pdl=pdl,
    )  # fmt: skip
