"""gpt-oss's decode step on the GPU, standalone: the gpt_oss block's launch sequence over its own
weights and buffers, until the engine runs the block (the wiring waits for the CUDA engine's
move onto the model-family seam; it takes `enqueue`'s sequence as it is).

Per layer (batch 1, everything that changes between steps in device memory, so the step is
one CUDA graph):

    q|k|v = matvec_seg(rmsnorm(x) * attn_norm) + bias           (three Q8_0 segments)
    attn  = attn_decode_rope_sinks(q|k|v)                      (YaRN tables; window on even layers)
    x    += matvec_seg(attn) + attn_output bias
    logits_e = matvec_seg(rmsnorm(x) * ffn_norm) + router bias
    ids, weights = moe_topk(logits_e)
    h     = moe_gate_up(rmsnorm(x) * ffn_norm)                 (the chosen experts, clamped SwiGLU)
    x    += moe_down(h) weighted                               (biases of every expert product)

then the output RMSNorm + head (`matvec_norm`) and the argmax, which also advances the position.
The KV cache is fp16 (n_kv, max_context, head_dim) per layer, like the engine's.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from runtime.gguf_file import GGUFModel

_RAW = ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate_inp", "ffn_gate_exps",
        "ffn_up_exps", "ffn_down_exps")  # fmt: skip
_F32 = ("attn_norm.weight", "attn_sinks.weight", "attn_output.bias", "post_attention_norm.weight",
        "ffn_gate_inp.bias", "ffn_gate_exps.bias", "ffn_up_exps.bias", "ffn_down_exps.bias")  # fmt: skip


class GptOssDecode:
    """Weights of a gpt-oss GGUF uploaded raw (vectors as f32), the step's buffers, the step."""

    def __init__(self, model: GGUFModel, max_context: int, *, pdl: bool = True):
        import pycuda.driver as drv

        from cuda.forward import splits_for
        from cuda.moe_ops import MoeKernels
        from cuda.ops import ARGMAX_BLOCKS, Ops
        from cuda.quant_ops import QuantKernels
        from runtime.numpy_layers import rope_tables

        c = self.c = model.config
        if c.moe is None or not c.attn_sinks:
            raise ValueError(f"{c.arch} is not a gpt-oss model")
        self.drv, self.max_context, self.pdl = drv, max_context, pdl
        free0 = drv.mem_get_info()[0]
        self.kq, self.ops, self.moe = QuantKernels(), Ops(c.head_dim), MoeKernels()
        self.stream = drv.Stream()
        self._held: list[Any] = []
        t = model.tensors
        self.layers = [self._layer(t, i) for i in range(c.n_layers)]
        self.embd = self._raw(t["token_embd.weight"]), t["token_embd.weight"].qtype
        head = t.get("output.weight", t["token_embd.weight"])
        self.head = self._raw(head) if head is not t["token_embd.weight"] else self.embd[0]
        self.head_qtype = head.qtype
        self.out_norm = self._f32(t["output_norm.weight"])
        m, kv = c.moe, (c.n_kv_heads, max_context, c.head_dim)
        self.k = [self._zeros(np.float16, kv) for _ in range(c.n_layers)]  # per layer
        self.v = [self._zeros(np.float16, kv) for _ in range(c.n_layers)]
        cos, sin = rope_tables(max_context, c.rope_dim, c.rope_base, c.rope_yarn)
        self.cos, self.sin = self._put(cos), self._put(sin)
        self.token = self._zeros(np.int32, (1,))  # the step's token id
        self.pos = self._zeros(np.int32, (1,))  # tokens in the cache before the step
        self.x = self._zeros(np.float32, (c.d_model,))  # residual stream
        self.qkv = self._zeros(np.float32, (c.q_dim + 2 * c.kv_dim,))
        self.attn = self._zeros(np.float32, (c.q_dim,))
        self.router = self._zeros(np.float32, (m.n_experts,))
        self.expert_ids = self._zeros(np.int32, (m.top_k,))
        self.expert_w = self._zeros(np.float32, (m.top_k,))
        self.h = self._zeros(np.float32, (m.top_k, m.d_ff))
        self.logits = self._zeros(np.float32, (c.vocab_size,))
        self.splits = splits_for(max_context)
        self.part = self._zeros(np.float32, (c.n_heads, self.splits, c.head_dim + 2))
        self.counters = self._zeros(np.uint32, (c.n_heads,))
        self.argmax_bufs = [self._zeros(np.float32, (ARGMAX_BLOCKS,)),
                            self._zeros(np.int32, (ARGMAX_BLOCKS,)), self._zeros(np.uint32, (1,))]  # fmt: skip
        self.next_token = self._zeros(np.int32, (1,))
        drv.Context.synchronize()
        self.vram_bytes = free0 - drv.mem_get_info()[0]

    # -- upload --------------------------------------------------------------------------------

    def _put(self, a: np.ndarray):
        import pycuda.gpuarray as ga

        g = ga.to_gpu(np.ascontiguousarray(a))
        self._held.append(g)
        return g.gpudata

    def _zeros(self, dtype, shape):
        return self._put(np.zeros(shape, dtype))

    def _raw(self, rec):
        return self._put(np.asarray(rec.raw).reshape(-1))

    def _f32(self, rec):
        return self._put(rec.dequantize().astype(np.float32).reshape(-1))

    def _layer(self, t, i: int) -> dict:
        b = f"blk.{i}."
        lw: dict[str, Any] = {n: (self._raw(t[b + n + ".weight"]), t[b + n + ".weight"].qtype)
                              for n in _RAW}  # fmt: skip
        lw |= {n: self._f32(t[b + n]) for n in _F32}
        bias = np.concatenate([t[b + f"attn_{p}.bias"].dequantize() for p in "qkv"])
        lw["qkv_bias"] = self._put(bias.astype(np.float32))
        return lw

    # -- the step ------------------------------------------------------------------------------

    def enqueue(self) -> int:
        """Launch one decode step on `stream` (token at `token`, position `pos`; the argmax
        writes `next_token` and advances `pos`); returns the number of launches."""
        c, m, s, kq, ops, moe, pdl = (self.c, self.c.moe, self.stream, self.kq, self.ops,
                                      self.moe, self.pdl)  # fmt: skip
        embd, eq = self.embd
        kq.embed_rows(eq, embd, c.d_model, self.token, 1, self.x, s)  # first: no PDL
        for i, lw in enumerate(self.layers):
            segs = [(lw[p][1], lw[p][0], rows) for p, rows in
                    (("attn_q", c.q_dim), ("attn_k", c.kv_dim), ("attn_v", c.kv_dim))]  # fmt: skip
            kq.matvec_seg(segs, c.d_model, self.x, self.qkv, s, norm_w_ptr=lw["attn_norm.weight"],
                          eps=c.norm_eps, bias_ptr=lw["qkv_bias"], pdl=pdl)  # fmt: skip
            ops.attn_decode_rope(
                self.qkv, self.k[i], self.v[i], self.attn, self.pos, self.part, self.counters,
                self.cos, self.sin, n_heads=c.n_heads, n_kv=c.n_kv_heads,
                max_ctx=self.max_context, rope_half=c.rope_dim // 2, neox=True,
                n_splits=self.splits, stream=s, scale=c.attn_scale, window=c.layer_window[i],
                sinks=lw["attn_sinks.weight"], pdl=pdl,
            )  # fmt: skip
            o, oq = lw["attn_output"]
            kq.matvec_seg([(oq, o, c.d_model)], c.q_dim, self.attn, self.x, s,
                          bias_ptr=lw["attn_output.bias"], accumulate=True, pdl=pdl)  # fmt: skip
            r, rq = lw["ffn_gate_inp"]
            ffn_norm = lw["post_attention_norm.weight"]
            kq.matvec_seg([(rq, r, m.n_experts)], c.d_model, self.x, self.router, s,
                          norm_w_ptr=ffn_norm, eps=c.norm_eps, bias_ptr=lw["ffn_gate_inp.bias"],
                          pdl=pdl)  # fmt: skip
            moe.topk(self.router, 1, m.n_experts, m.top_k, self.expert_ids, self.expert_w, s,
                     pdl=pdl)  # fmt: skip
            (g, gq), (u, _), (d, dq) = lw["ffn_gate_exps"], lw["ffn_up_exps"], lw["ffn_down_exps"]
            moe.gate_up(gq, g, u, lw["ffn_gate_exps.bias"], lw["ffn_up_exps.bias"], m.d_ff,
                        c.d_model, self.x, 1, self.expert_ids, m.top_k, self.h, s, alpha=m.alpha,
                        limit=m.limit, norm_w=ffn_norm, eps=c.norm_eps, pdl=pdl)  # fmt: skip
            moe.down(dq, d, lw["ffn_down_exps.bias"], c.d_model, m.d_ff, self.h, self.expert_ids,
                     self.expert_w, m.top_k, 1, self.x, s, accumulate=True, pdl=pdl)  # fmt: skip
        kq.matvec_norm(self.head_qtype, self.head, c.vocab_size, c.d_model, self.x,
                       self.out_norm, c.norm_eps, self.logits, s, pdl=pdl)  # fmt: skip
        ops.argmax(self.logits, c.vocab_size, *self.argmax_bufs, self.next_token, s,
                   pos=self.pos, advance=1, pdl=pdl)  # fmt: skip
        return 3 + 7 * c.n_layers

    def step(self, token: int) -> np.ndarray:
        """One eager step on `token` at the current position: its (vocab,) logits."""
        self.drv.memcpy_htod(self.token, np.array([token], np.int32))
        self.enqueue()
        self.stream.synchronize()
        logits = np.empty(self.c.vocab_size, np.float32)
        self.drv.memcpy_dtoh(logits, self.logits)
        return logits

    def reset(self, pos: int = 0) -> None:
        """Start over at `pos` (the cache beyond holds whatever it holds)."""
        self.drv.memcpy_htod(self.pos, np.array([pos], np.int32))

    def close(self) -> None:
        self._held.clear()
