"""The llama block on the GPU (llama, qwen2, phi3): runtime/models/llama.py's function.

    x += o(attention(rope(q), rope(k), v)),   q | k | v = qkv(rmsnorm(x) * attn_norm) (+ bias)
    x += down(act(gate) * up),                gate | up = gate_up(rmsnorm(x) * ffn_norm)

What differs between the three families is data: a q/k/v bias (qwen2), matrices stored fused or
apart (phi3; the upload makes both one group), the rope style. Decode with the fused kernels is
5 launches per layer: the normed q|k|v product (the segmented kernel when the types are mixed
or there is a bias), attention with rope and the KV write, o accumulated into the residual, the
normed gate|up with the activation, down accumulated. Prefill: 9 launches per layer plus one
per further segment of a mixed-type group, for all the chunk's tokens.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cuda.forward import Forward
    from cuda.weights import LayerWeights


def decode_layer(f: Forward, i: int, lw: LayerWeights, splits: int) -> None:
    f.norm_qkv(lw, 1)
    f.attend_decode(i, lw, splits)
    f.residual(lw.attn_output, f.b["act.attn"], 1)
    f.norm_ffn(lw, 1)
    f.residual(lw.down, f.b["act.h"], 1)


def prefill_layer(f: Forward, i: int, lw: LayerWeights, n: int) -> None:
    f.norm_qkv(lw, n)
    f.rope_kv_write(i, lw, n)
    f.attend_prefill(i, n)
    f.residual(lw.attn_output, f.b["act.attn"], n)
    f.norm_ffn(lw, n)
    f.residual(lw.down, f.b["act.h"], n)
