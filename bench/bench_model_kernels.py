"""Micro-benchmark of one decode step's and one 512-token prefill pass's kernels at the shapes and
types of Qwen2.5-Coder-0.5B Q4_K_M (qwen2) and Gemma-3-270M Q4_K_M (gemma3) (run on the GPU).

    python3 bench/bench_model_kernels.py [--family qwen2|gemma3|all] [--pos 256]

Each kernel is timed as bench_quant_kernels.py does (REPS launches captured in a graph, weights
cycled beyond L2). The sums are kernel time alone: one decode step (every layer's launches as
cuda/forward.py makes them for the family, plus head and argmax) and the products + attention of
a pp512 pass; the engine's graph adds the gaps between nodes (PDL hides most of them).
Layers of the "more bits" kind (attn_v Q8_0, ffn_down Q6_K) and the others are timed apart and
weighted by their count in the real file.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pycuda.driver as drv  # noqa: E402
from bench_quant_kernels import time_graph, weight_copies  # noqa: E402
from gguf import GGMLQuantizationType as Q  # noqa: E402

from tools.synthetic_families import MORE_BITS, REAL_LAYERS, REAL_VOCAB  # noqa: E402

#: family -> (d_model, heads, kv heads, head_dim, d_ff, window, qkv bias, activation)
SHAPES = {
    "qwen2": (896, 14, 2, 64, 4864, 0, True, "silu"),
    "gemma3": (640, 4, 1, 256, 2048, 512, False, "gelu_tanh"),
}
HEAD_TYPE = Q.Q8_0  # qwen2's output.weight; gemma3's tied token_embd
N = 512  # prefill tokens


def bench_family(family: str, pos: int, kq, ops, stream, rng) -> None:
    d, h, kv, hd, ff, window, with_bias, act = SHAPES[family]
    q_dim, kv_dim = h * hd, kv * hd
    n_layers, n_more = REAL_LAYERS[family], len(MORE_BITS[family])
    ctx = 2048
    widest = N * max(q_dim + 2 * kv_dim, 2 * ff)  # floats of the largest activation
    buf = {name: drv.mem_alloc(4 * widest) for name in ("x", "qkv", "attn", "h")}
    buf["y"] = drv.mem_alloc(4 * max(widest, REAL_VOCAB[family]))  # the logits too
    norm = drv.to_device(np.ones(max(d, ff), np.float32))
    drv.memcpy_htod(buf["x"], rng.standard_normal(N * max(d, ff)).astype(np.float32))
    drv.memcpy_htod(buf["qkv"], rng.standard_normal(N * (q_dim + 2 * kv_dim)).astype(np.float32))
    kc = drv.mem_alloc(2 * kv * ctx * hd)
    vc = drv.mem_alloc(2 * kv * ctx * hd)
    cos = drv.to_device(np.ones((ctx, hd // 2), np.float32))
    sin = drv.to_device(np.zeros((ctx, hd // 2), np.float32))
    posd = drv.to_device(np.array([pos], np.int32))
    pos0 = drv.to_device(np.array([0], np.int32))
    splits = 8 if pos >= 128 else 4
    part = drv.mem_alloc(4 * h * 32 * (hd + 2))
    counters = drv.to_device(np.zeros(h, np.uint32))
    decode: dict[str, float] = {}
    prefill: dict[str, float] = {}
    qk_norm = dict(q_norm=norm, k_norm=norm, norm_eps=1e-6) if family == "gemma3" else {}

    def timed(table, label, fn, weight, reps=60):
        t = time_graph(stream, fn, reps=reps)
        table[label] = table.get(label, 0.0) + t * weight
        print(f"  {family} {label:44s} {t * 1e6:9.2f} us  x{weight}")

    for more in (True, False):
        weight = n_more if more else n_layers - n_more
        v_type = Q.Q8_0 if more else Q.Q5_0
        down_type = Q.Q6_K if more else Q.Q4_K
        o_type = Q.Q5_0 if family == "qwen2" else Q.Q4_K
        mats = {"q": (Q.Q5_0, q_dim, d), "k": (Q.Q5_0, kv_dim, d), "v": (v_type, kv_dim, d)}
        mats |= {"o": (o_type, d, q_dim), "gate_up": (Q.Q5_0, 2 * ff, d)}
        mats["down"] = (down_type, d, ff)
        w = {name: weight_copies(t, r, c, rng)[0] for name, (t, r, c) in mats.items()}
        bias = drv.to_device(np.zeros(q_dim + 2 * kv_dim, np.float32)) if with_bias else None
        tag = "more-bits" if more else "plain"
        segs = [(mats[k][0], k, mats[k][1]) for k in ("q", "k", "v")]

        def qkv(i, segs=segs, w=w, bias=bias):
            kq.matvec_seg(
                [(t, w[k][i % len(w[k])], r) for t, k, r in segs], d, buf["x"], buf["qkv"],
                stream, norm_w_ptr=norm, eps=1e-6, bias_ptr=bias, pdl=True,
            )  # fmt: skip

        timed(decode, f"norm+qkv segmented {tag}", qkv, weight)
        timed(decode, f"attention (rope, kv write) pos {pos}", lambda i: ops.attn_decode_rope(
            buf["qkv"], kc, vc, buf["attn"], posd, part, counters, cos, sin, n_heads=h, n_kv=kv,
            max_ctx=ctx, rope_half=hd // 2, neox=True, n_splits=splits, stream=stream,
            window=window, pdl=True, **qk_norm,
        ), weight)  # fmt: skip
        o_t, _, _ = mats["o"]
        accumulate = family == "qwen2"  # gemma3 norms the output before the residual add
        timed(decode, f"o {o_t.name}", lambda i, w=w, o_t=o_t, acc=accumulate: kq.matvec(
            o_t, w["o"][i % len(w["o"])], d, q_dim, buf["attn"], buf["y"], stream,
            accumulate=acc, pdl=True,
        ), weight)  # fmt: skip
        if family == "gemma3":
            timed(decode, "post-norm add", lambda i: ops.add_rms_norm(
                buf["y"], norm, buf["x"], 1, d, 1e-6, stream, pdl=True), weight)  # fmt: skip
        timed(decode, f"norm+gate|up+{act}", lambda i, w=w: kq.matvec_norm_glu(
            Q.Q5_0, w["gate_up"][i % len(w["gate_up"])], ff, d, buf["x"], norm, 1e-6, buf["h"],
            stream, act=act, pdl=True,
        ), weight)  # fmt: skip
        timed(decode, f"down {down_type.name}", lambda i, w=w, t=down_type, acc=accumulate: kq.matvec(
            t, w["down"][i % len(w["down"])], d, ff, buf["h"], buf["y"], stream,
            accumulate=acc, pdl=True,
        ), weight)  # fmt: skip
        for variant in ("wide", "wide4"):  # the default's alternatives, not in the sum
            timed({}, f"  down {down_type.name} variant {variant}", lambda i, w=w,
                  t=down_type, v=variant: kq.matvec(t, w["down"][i % len(w["down"])], d, ff,
                  buf["h"], buf["y"], stream, variant=v, pdl=True), weight)  # fmt: skip
        if family == "gemma3":
            timed(decode, "post-norm add (ffn)", lambda i: ops.add_rms_norm(
                buf["y"], norm, buf["x"], 1, d, 1e-6, stream, pdl=True), weight)  # fmt: skip
        for name, (t, r, c) in mats.items():  # prefill: one product per matrix (q, k, v apart)
            timed(prefill, f"matmul n={N} {name} {t.name} {r}x{c}", lambda i, w=w, t=t, r=r,
                  c=c, name=name: kq.matmul(t, w[name][i % len(w[name])], r, c, buf["x"], N,
                                            buf["y"], stream), weight, reps=10)  # fmt: skip
    timed(prefill, f"rope+kv write n={N}", lambda i: ops.rope_kv_write(
        buf["qkv"], N, pos0, cos, sin, kc, vc, n_heads=h, n_kv=kv, rope_half=hd // 2, max_ctx=ctx,
        neox=True, stream=stream, **qk_norm), n_layers, reps=10)  # fmt: skip
    timed(prefill, f"attention prefill n={N}", lambda i: ops.attn_prefill(
        buf["qkv"], kc, vc, buf["attn"], pos0, N, n_heads=h, n_kv=kv, max_ctx=ctx, stream=stream,
        window=window), n_layers, reps=10)  # fmt: skip
    if hd <= 128:  # the tensor-core kernel (cuda.ops.PREFILL_ATTENTION), not in the sum
        timed({}, f"  attention prefill n={N} tensor cores", lambda i: ops.attn_prefill(
            buf["qkv"], kc, vc, buf["attn"], pos0, N, n_heads=h, n_kv=kv, max_ctx=ctx,
            stream=stream, window=window, kernel="tc"), n_layers, reps=10)  # fmt: skip
    vocab = REAL_VOCAB[family]
    head = weight_copies(HEAD_TYPE, vocab, d, rng)[0]
    timed(decode, f"head {HEAD_TYPE.name} {vocab}x{d}", lambda i: kq.matvec_norm(
        HEAD_TYPE, head[i % len(head)], vocab, d, buf["x"], norm, 1e-6, buf["y"], stream,
        pdl=True), 1)  # fmt: skip
    pv, pi = drv.mem_alloc(4 * 64), drv.mem_alloc(4 * 64)
    cnt, out = drv.to_device(np.zeros(1, np.uint32)), drv.mem_alloc(4)
    timed(decode, f"argmax {vocab}", lambda i: ops.argmax(
        buf["y"], vocab, pv, pi, cnt, out, stream, pdl=True), 1)  # fmt: skip
    step = sum(decode.values())
    print(f"{family}: decode step kernels {step * 1e6:.1f} us (<= {1 / step:,.0f} tokens/s), "
          f"pp{N} products + rope + attention {sum(prefill.values()) * 1e3:.2f} ms")  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--family", choices=[*SHAPES, "all"], default="all")
    ap.add_argument("--pos", type=int, default=256, help="decode position (keys attended)")
    args = ap.parse_args()
    from cuda.ops import Ops
    from cuda.quant_ops import QuantKernels

    drv.init()
    ctx = drv.Device(0).retain_primary_context()
    ctx.push()
    try:
        kq, stream, rng = QuantKernels(), drv.Stream(), np.random.default_rng(0)
        print(f"device: {drv.Context.get_device().name()}")
        for family in SHAPES if args.family == "all" else [args.family]:
            bench_family(family, args.pos, kq, Ops(SHAPES[family][3]), stream, rng)
    finally:
        ctx.pop()


if __name__ == "__main__":
    main()
