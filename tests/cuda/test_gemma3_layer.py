"""One gemma3 layer composed from the CUDA building blocks, prefill and decode, against a float64
numpy layer written here from llama.cpp's gemma3 graph (the wiring branch's template).

Layer (Gemma-3-270M's shapes and types: d_model 640, 4 heads, 1 KV head, head_dim 256, d_ff
2048; q/k Q5_0, v Q8_0, o Q4_K, gate/up Q5_0, down Q6_K), on embeddings scaled by sqrt(640):

    h = rmsnorm(x) * attn_norm;  q, k, v = h Wq, h Wk, h Wv
    q, k = per-head rmsnorm(q) * q_norm, rmsnorm(k) * k_norm;  NEOX rope (the layer's table)
    attention over the window (scale 1/sqrt(256));  x += rmsnorm(attn Wo) * post_attention_norm
    x += rmsnorm((gelu_tanh(h2 Wgate) * h2 Wup) Wdown) * post_ffw_norm,  h2 = rmsnorm(x) * ffn_norm

The KV cache holds fp16 on both sides. Compared: the layer's update of the residual stream
(x_out - x_in), relative L2 error below 5e-3 (fp16 tensor-core prefill products, 2e-3 each at
worst; a wrong window, norm or order gives errors of order 1).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from gguf import GGMLQuantizationType as Q

from runtime import numpy_layers as nl
from runtime.quants import dequantize
from tests.cuda.checks import glu_ref, rel
from tests.cuda.ggml_random import random_weights

D_MODEL, H, KV, HD, FF = 640, 4, 1, 256, 2048
Q_DIM, KV_DIM = H * HD, KV * HD
EPS, WINDOW, CTX, VOCAB = 1e-6, 16, 64, 300
TYPES = {"q": Q.Q5_0, "k": Q.Q5_0, "v": Q.Q8_0, "o": Q.Q4_K, "gate_up": Q.Q5_0, "down": Q.Q6_K}
SHAPES = {"q": (Q_DIM, D_MODEL), "k": (KV_DIM, D_MODEL), "v": (KV_DIM, D_MODEL),
          "o": (D_MODEL, Q_DIM), "gate_up": (2 * FF, D_MODEL), "down": (D_MODEL, FF)}  # fmt: skip
NORMS = {"attn": D_MODEL, "q": HD, "k": HD, "post_attn": D_MODEL, "ffn": D_MODEL,
         "post_ffw": D_MODEL}  # fmt: skip
TOL = 5e-3


@pytest.fixture(scope="module")
def layer():
    rng = np.random.default_rng(2026)
    raw = {n: random_weights(TYPES[n], *SHAPES[n], rng) for n in TYPES}
    emb = random_weights(Q.Q8_0, VOCAB, D_MODEL, rng)
    norms = {n: rng.uniform(0.5, 1.5, size).astype(np.float32) for n, size in NORMS.items()}
    cos, sin = nl.rope_tables(CTX, HD, 10000.0)  # a sliding layer's table
    return raw, emb, norms, cos, sin


def _rms(x, w):
    x = np.asarray(x, np.float64)
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + EPS) * w


def _neox(x, cos, sin):  # x (T, heads, HD) float64; cos, sin (T, HD / 2)
    half = HD // 2
    a, b = x[..., :half], x[..., half:]
    c, s = cos[:, None, :].astype(np.float64), sin[:, None, :].astype(np.float64)
    return np.concatenate([a * c - b * s, a * s + b * c], axis=-1)


class Reference:
    """The layer in float64 numpy with its own fp16 KV cache."""

    def __init__(self, layer):
        raw, emb, self.norms, self.cos, self.sin = layer
        self.w = {n: dequantize(raw[n], TYPES[n], SHAPES[n]).astype(np.float64) for n in raw}
        self.emb = dequantize(emb, Q.Q8_0, (VOCAB, D_MODEL))
        self.k = np.zeros((KV, CTX, HD), np.float16)
        self.v = np.zeros((KV, CTX, HD), np.float16)

    def embed(self, ids):
        return (self.emb[ids] * np.float32(math.sqrt(D_MODEL))).astype(np.float64)

    def forward(self, x, pos0):
        w, nm, t_new = self.w, self.norms, x.shape[0]
        h = _rms(x, nm["attn"])
        q = _rms((h @ w["q"].T).reshape(t_new, H, HD), nm["q"])
        k = _rms((h @ w["k"].T).reshape(t_new, KV, HD), nm["k"])
        v = (h @ w["v"].T).reshape(t_new, KV, HD)
        cs, sn = self.cos[pos0 : pos0 + t_new], self.sin[pos0 : pos0 + t_new]
        q, k = _neox(q, cs, sn), _neox(k, cs, sn)
        self.k[:, pos0 : pos0 + t_new] = k.transpose(1, 0, 2).astype(np.float16)
        self.v[:, pos0 : pos0 + t_new] = v.transpose(1, 0, 2).astype(np.float16)
        attn = np.empty((t_new, Q_DIM))
        for t in range(t_new):  # query at p sees keys max(0, p - WINDOW + 1) .. p
            p = pos0 + t
            lo = max(0, p - WINDOW + 1)
            ks, vs = self.k[0, lo : p + 1].astype(np.float64), self.v[0, lo : p + 1]
            for head in range(H):
                s = ks @ q[t, head] / math.sqrt(HD)
                e = np.exp(s - s.max())
                attn[t, head * HD : (head + 1) * HD] = e @ vs.astype(np.float64) / e.sum()
        x = x + _rms(attn @ w["o"].T, nm["post_attn"])
        h2 = _rms(x, nm["ffn"])
        gate_up = h2 @ w["gate_up"].T
        y = glu_ref(gate_up[:, :FF], gate_up[:, FF:], "gelu_tanh") @ w["down"].T
        return x + _rms(y, nm["post_ffw"])


class GpuLayer:
    """The same layer launched as a gemma3 forward pass would launch it."""

    def __init__(self, layer, cuda_ctx):
        import pycuda.driver as drv
        import pycuda.gpuarray as ga

        from cuda.ops import Ops
        from cuda.quant_ops import QuantKernels

        raw, emb, norms, cos, sin = layer
        self.drv, self.ga, self.s = drv, ga, drv.Stream()
        self.ops, self.q = Ops(HD), QuantKernels()
        up = ga.to_gpu
        self.w = {n: up(r) for n, r in raw.items()}
        self.emb, self.norm = up(emb), {n: up(v) for n, v in norms.items()}
        self.cos, self.sin = up(cos), up(sin)
        self.kc, self.vc = ga.zeros((KV, CTX, HD), np.float16), ga.zeros((KV, CTX, HD), np.float16)
        n = 64
        f32 = np.float32
        self.x, self.xn, self.y = (ga.zeros((n, D_MODEL), f32) for _ in range(3))
        self.qkv, self.attn = ga.zeros((n, Q_DIM + 2 * KV_DIM), f32), ga.zeros((n, Q_DIM), f32)
        self.gate_up, self.h = ga.zeros((n, 2 * FF), f32), ga.zeros((n, FF), f32)
        self.ids, self.pos = ga.zeros(n, np.int32), ga.zeros(1, np.int32)
        self.part, self.counters = ga.zeros(H * 4 * (HD + 2), f32), ga.zeros(H, np.uint32)

    def _p(self, name):
        return self.w[name].gpudata

    def prefill(self, ids):
        q, ops, s, n = self.q, self.ops, self.s, len(ids)
        nm = {k: v.gpudata for k, v in self.norm.items()}
        self.drv.memcpy_htod(self.ids.gpudata, np.asarray(ids, np.int32))
        q.embed_rows(Q.Q8_0, self.emb.gpudata, D_MODEL, self.ids.gpudata, n, self.x.gpudata, s,
                     scale=math.sqrt(D_MODEL))  # fmt: skip
        ops.rms_norm(self.x.gpudata, nm["attn"], self.xn.gpudata, n, D_MODEL, EPS, s)
        col0 = 0
        for name in ("q", "k", "v"):  # a mixed-type group: one product per matrix, all tokens
            rows = SHAPES[name][0]
            q.matmul(TYPES[name], self._p(name), rows, D_MODEL, self.xn.gpudata, n,
                     self.qkv.gpudata, s, ldy=Q_DIM + 2 * KV_DIM, col0=col0)  # fmt: skip
            col0 += rows
        ops.rope_kv_write(
            self.qkv.gpudata, n, self.pos.gpudata, self.cos.gpudata, self.sin.gpudata,
            self.kc.gpudata, self.vc.gpudata, n_heads=H, n_kv=KV, rope_half=HD // 2,
            max_ctx=CTX, neox=True, stream=s, q_norm=nm["q"], k_norm=nm["k"], norm_eps=EPS,
        )  # fmt: skip
        ops.attn_prefill(self.qkv.gpudata, self.kc.gpudata, self.vc.gpudata, self.attn.gpudata,
                         self.pos.gpudata, n, n_heads=H, n_kv=KV, max_ctx=CTX, stream=s,
                         scale=HD**-0.5, window=WINDOW)  # fmt: skip
        q.matmul(TYPES["o"], self._p("o"), D_MODEL, Q_DIM, self.attn.gpudata, n,
                 self.y.gpudata, s)  # fmt: skip
        ops.add_rms_norm(self.y.gpudata, nm["post_attn"], self.x.gpudata, n, D_MODEL, EPS, s,
                         w_next=nm["ffn"], xn=self.xn.gpudata)  # fmt: skip
        q.matmul(TYPES["gate_up"], self._p("gate_up"), 2 * FF, D_MODEL, self.xn.gpudata, n,
                 self.gate_up.gpudata, s)  # fmt: skip
        ops.glu(self.gate_up.gpudata, self.h.gpudata, FF, n, s, act="gelu_tanh")
        q.matmul(TYPES["down"], self._p("down"), D_MODEL, FF, self.h.gpudata, n,
                 self.y.gpudata, s)  # fmt: skip
        ops.add_rms_norm(self.y.gpudata, nm["post_ffw"], self.x.gpudata, n, D_MODEL, EPS, s)
        ops.advance_position(self.pos.gpudata, n, s)
        s.synchronize()
        return self.x.get()[:n]

    def decode(self, token: int, splits: int):
        q, ops, s = self.q, self.ops, self.s
        nm = {k: v.gpudata for k, v in self.norm.items()}
        self.drv.memcpy_htod(self.ids.gpudata, np.array([token], np.int32))
        q.embed_rows(Q.Q8_0, self.emb.gpudata, D_MODEL, self.ids.gpudata, 1, self.x.gpudata, s,
                     scale=math.sqrt(D_MODEL))  # fmt: skip
        segs = [(TYPES[n], self._p(n), SHAPES[n][0]) for n in ("q", "k", "v")]
        q.matvec_seg(segs, D_MODEL, self.x.gpudata, self.qkv.gpudata, s, norm_w_ptr=nm["attn"],
                     eps=EPS, pdl=True)  # fmt: skip
        ops.attn_decode_rope(
            self.qkv.gpudata, self.kc.gpudata, self.vc.gpudata, self.attn.gpudata,
            self.pos.gpudata, self.part.gpudata, self.counters.gpudata, self.cos.gpudata,
            self.sin.gpudata, n_heads=H, n_kv=KV, max_ctx=CTX, rope_half=HD // 2, neox=True,
            n_splits=splits, stream=s, q_norm=nm["q"], k_norm=nm["k"], norm_eps=EPS,
            scale=HD**-0.5, window=WINDOW, pdl=True,
        )  # fmt: skip
        q.matvec(TYPES["o"], self._p("o"), D_MODEL, Q_DIM, self.attn.gpudata, self.y.gpudata, s,
                 pdl=True)  # fmt: skip
        ops.add_rms_norm(self.y.gpudata, nm["post_attn"], self.x.gpudata, 1, D_MODEL, EPS, s,
                         pdl=True)  # fmt: skip
        q.matvec_norm_glu(TYPES["gate_up"], self._p("gate_up"), FF, D_MODEL, self.x.gpudata,
                          nm["ffn"], EPS, self.h.gpudata, s, act="gelu_tanh", pdl=True)  # fmt: skip
        q.matvec(TYPES["down"], self._p("down"), D_MODEL, FF, self.h.gpudata, self.y.gpudata, s,
                 pdl=True)  # fmt: skip
        ops.add_rms_norm(self.y.gpudata, nm["post_ffw"], self.x.gpudata, 1, D_MODEL, EPS, s,
                         pdl=True)  # fmt: skip
        ops.advance_position(self.pos.gpudata, 1, s)
        s.synchronize()
        return self.x.get()[:1]


def test_gemma3_layer_prefill_then_decode_matches_numpy(cuda_ctx, layer):
    ref, gpu = Reference(layer), GpuLayer(layer, cuda_ctx)
    rng = np.random.default_rng(7)
    ids = [int(t) for t in rng.integers(0, VOCAB, 40)]  # longer than the window
    x_in = ref.embed(ids)
    got, want = gpu.prefill(ids), ref.forward(x_in, 0)
    err = rel(got - x_in, want - x_in)
    print(f"gemma3 layer prefill: relative error of the update {err:.2e}")
    assert err < TOL
    for step, token in enumerate(rng.integers(0, VOCAB, 3)):
        pos = len(ids) + step
        x_in = ref.embed([int(token)])
        got, want = gpu.decode(int(token), splits=1 + step), ref.forward(x_in, pos)
        err = rel(got - x_in, want - x_in)
        print(f"gemma3 layer decode at {pos}: relative error of the update {err:.2e}")
        assert err < TOL
