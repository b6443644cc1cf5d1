"""The steps every family's CUDA block is written with (cuda/models/<block>.py).

Each step works on the pass's n rows of the residual stream `act.x`: n == 1 is the decode step,
which uses the fused kernels where the layout and the kernels allow (one launch for the norm and
a projection, for rope + KV write + attention, for the norm, gate|up and the activation); n > 1
is a prefill chunk, matrix-matrix products over all n tokens, no launch per token. A step takes
the layer's values from the config alone: its rotary table (`layer_rope_base[i]`: one table per
distinct base), its window (`layer_window[i]`), the score scale, whether q and k are normed
(`qk_norm`), the activation (`ffn_act`); and from the layer's weights what only some families
have (a bias, gpt-oss's attention sinks: None elsewhere). `Forward` (cuda/forward.py) inherits
these steps and owns the buffers they name; each buffer's shape is in its table (`buffer_shapes`).
"""

from __future__ import annotations

from typing import Any

from cuda.weights import LayerWeights, Segment


class Layers:
    """Mixin of `Forward`: the attributes below are set by its constructor."""

    c: Any  # runtime.model_config.ModelConfig
    b: dict[str, int]  # buffer name -> device pointer (the bound slot's rows)
    base: dict[str, int]  # buffer name -> its allocation (slot 0's rows)
    slot_bytes: dict[str, int]  # per-slot buffer -> bytes of one slot's row
    ops: Any  # cuda.ops.Ops
    q: Any  # cuda.quant_ops.QuantKernels (counting its launches)
    stream: Any
    pdl: bool  # programmatic dependent launch for the decode step's kernels after the first
    fuse_norm: bool
    fuse_glu: bool
    fuse_rope: bool
    max_context: int
    _layer_kv: int  # bytes of one layer's K (or V) cache
    #: 0: a decode step (n == 1) is one sequence's; k > 0: the batched step of k rows, one
    #: per sequence (cuda/forward_rows.py): the n == 1 steps below then take all k rows
    rows: int = 0

    # -- where a layer's state is ----------------------------------------------------------------

    def layer_kv(self, i: int) -> tuple[int, int]:
        """Layer i's K and V cache, each (n_kv_heads, max_context, head_dim) fp16."""
        off = i * self._layer_kv
        return self.b["kv.k"] + off, self.b["kv.v"] + off

    def layer_rope(self, i: int) -> tuple[int, int]:
        """cos and sin tables (max_context, rope_dim / 2) of layer i's rope base."""
        k = self.c.rope_bases.index(self.c.layer_rope_base[i])
        return self.b[f"rope.{k}.cos"], self.b[f"rope.{k}.sin"]

    def _qk_norms(self, lw: LayerWeights) -> dict[str, Any]:
        c = self.c
        return dict(q_norm=lw.q_norm, k_norm=lw.k_norm, norm_eps=c.norm_eps) if c.qk_norm else {}

    # -- products --------------------------------------------------------------------------------

    def project(
        self, segs: tuple[Segment, ...], x: int, y: int, n: int, width: int, bias: int | None
    ) -> None:
        """y (n, width) = x (n, cols) @ W.T (+ bias), one product per segment, each writing its
        column slice [row0, row0 + rows) of y for all n rows at once (no launch per token)."""
        for sg in segs:
            b = None if bias is None else bias + 4 * sg.row0
            if n == 1 and self.rows:
                if b is not None:
                    raise ValueError("the batched step takes a biased projection fused only")
                self.q.matvec_rows(
                    sg.qtype, sg.ptr, sg.rows, sg.cols, x, self.rows, y + 4 * sg.row0,
                    self.stream, xs=sg.cols, ys=width, pdl=self.pdl,
                )  # fmt: skip
            elif n == 1:
                self.q.matvec(
                    sg.qtype, sg.ptr, sg.rows, sg.cols, x, y + 4 * sg.row0, self.stream,
                    pdl=self.pdl,
                )  # fmt: skip
                if b is not None:  # the unfused decode step only: the fused one has it in
                    self.ops.add(y + 4 * sg.row0, b, sg.rows, self.stream, pdl=self.pdl)
            else:
                self.q.matmul(
                    sg.qtype, sg.ptr, sg.rows, sg.cols, x, n, y, self.stream, ldy=width,
                    col0=sg.row0, bias_ptr=b,
                )  # fmt: skip

    def product(
        self, seg: Segment, x: int, y: int, n: int, *, accumulate: bool, bias: int | None = None
    ) -> None:
        """y (n, rows) = x (n, cols) @ W.T (+ bias, `rows` floats), added to y when
        `accumulate`."""
        if n == 1 and self.rows:  # (a biased product is gpt-oss's router: no batched step)
            if bias is not None:
                raise ValueError("the batched step takes a biased projection fused only")
            self.q.matvec_rows(
                seg.qtype, seg.ptr, seg.rows, seg.cols, x, self.rows, y, self.stream,
                xs=seg.cols, ys=seg.rows, accumulate=accumulate, pdl=self.pdl,
            )  # fmt: skip
            return
        if bias is not None:  # decode: the segmented kernel adds it; prefill: the epilogue
            if n == 1:
                self.q.matvec_seg(
                    [(seg.qtype, seg.ptr, seg.rows)], seg.cols, x, y, self.stream,
                    bias_ptr=bias, accumulate=accumulate, pdl=self.pdl,
                )  # fmt: skip
            else:
                self.q.matmul(
                    seg.qtype, seg.ptr, seg.rows, seg.cols, x, n, y, self.stream,
                    accumulate=accumulate, bias_ptr=bias,
                )  # fmt: skip
            return
        if n == 1:
            self.q.matvec(
                seg.qtype, seg.ptr, seg.rows, seg.cols, x, y, self.stream, accumulate=accumulate,
                pdl=self.pdl,
            )  # fmt: skip
        else:
            self.q.matmul(
                seg.qtype, seg.ptr, seg.rows, seg.cols, x, n, y, self.stream, accumulate=accumulate
            )

    def residual(self, seg: Segment, x: int, n: int) -> None:
        """act.x (n, d_model) += x (n, cols) @ W.T: the residual add fused into the product."""
        self.product(seg, x, self.b["act.x"], n, accumulate=True)

    # -- the steps of a layer --------------------------------------------------------------------

    def rms_norm(self, x: int, w: int, y: int, n: int) -> None:
        """y (n, d_model) = rmsnorm(x) * w."""
        self.ops.rms_norm(
            x, w, y, self._n(n), self.c.d_model, self.c.norm_eps, self.stream,
            pdl=self.pdl and n == 1,
        )  # fmt: skip

    def _n(self, n: int) -> int:
        """Rows a step of n tokens covers: the batched step's rows for a decode step."""
        return self.rows if n == 1 and self.rows else n

    def norm_qkv(self, lw: LayerWeights, n: int) -> None:
        """act.qkv (n, q_dim + 2 kv_dim) = q | k | v of rmsnorm(x) * attn_norm (+ bias)."""
        if n == 1 and self.fuse_norm:
            self._project_normed(lw.qkv, lw.attn_norm, self.b["act.qkv"], lw.qkv_bias)
            return
        self.rms_norm(self.b["act.x"], lw.attn_norm, self.b["act.xn"], n)
        self.qkv(lw, n)

    def qkv(self, lw: LayerWeights, n: int) -> None:
        """act.qkv = q | k | v of act.xn (+ bias): the input already normed."""
        c = self.c
        self.project(lw.qkv, self.b["act.xn"], self.b["act.qkv"], n, c.q_dim + 2 * c.kv_dim,
                     lw.qkv_bias)  # fmt: skip

    def _project_normed(
        self, segs: tuple[Segment, ...], norm_w: int, y: int, bias: int | None
    ) -> None:
        """Decode: y = W @ (rmsnorm(x) * norm_w) (+ bias) in one launch: the plain fused kernel
        for one segment without bias, else the segmented one (mixed types, qwen2's bias)."""
        c, x = self.c, self.b["act.x"]
        if self.rows:
            width = sum(g.rows for g in segs)
            if len(segs) == 1 and bias is None:
                g = segs[0]
                self.q.matvec_norm_rows(
                    g.qtype, g.ptr, g.rows, g.cols, x, norm_w, c.norm_eps, self.rows, y,
                    self.stream, xs=c.d_model, ys=width, pdl=self.pdl,
                )  # fmt: skip
            else:
                self.q.matvec_seg_rows(
                    [(g.qtype, g.ptr, g.rows) for g in segs], segs[0].cols, x, self.rows, y,
                    self.stream, xs=c.d_model, ys=width, norm_w_ptr=norm_w, eps=c.norm_eps,
                    bias_ptr=bias, pdl=self.pdl,
                )  # fmt: skip
            return
        if len(segs) == 1 and bias is None:
            g = segs[0]
            self.q.matvec_norm(
                g.qtype, g.ptr, g.rows, g.cols, x, norm_w, c.norm_eps, y, self.stream,
                pdl=self.pdl,
            )  # fmt: skip
            return
        self.q.matvec_seg(
            [(g.qtype, g.ptr, g.rows) for g in segs], segs[0].cols, x, y, self.stream,
            norm_w_ptr=norm_w, eps=c.norm_eps, bias_ptr=bias, pdl=self.pdl,
        )  # fmt: skip

    def rope_kv_write(self, i: int, lw: LayerWeights, n: int) -> None:
        """(q/k RMSNorm per head,) rotate q and k of act.qkv in place; k, v into layer i's cache."""
        c, b = self.c, self.b
        (kc, vc), (cos, sin) = self.layer_kv(i), self.layer_rope(i)
        self.ops.rope_kv_write(
            b["act.qkv"], n, b["state.pos"], cos, sin, kc, vc, n_heads=c.n_heads,
            n_kv=c.n_kv_heads, rope_half=c.rope_dim // 2, max_ctx=self.max_context,
            neox=c.rope_style == "neox", stream=self.stream, **self._qk_norms(lw),
            pdl=self.pdl and n == 1,
        )  # fmt: skip

    def attend_decode(self, i: int, lw: LayerWeights, splits: int) -> None:
        """act.attn (q_dim,) = attention of the step's query over layer i's visible keys, after
        rope (and the q/k norms) and the KV write: one fused launch where the rope allows it."""
        c, b, ops = self.c, self.b, self.ops
        (kc, vc), (cos, sin) = self.layer_kv(i), self.layer_rope(i)
        geometry = dict(
            n_heads=c.n_heads, n_kv=c.n_kv_heads, max_ctx=self.max_context, n_splits=splits,
            scale=c.attn_scale, window=c.layer_window[i], stream=self.stream, pdl=self.pdl,
            sinks=lw.attn_sinks,
        )  # fmt: skip
        if self.rows:
            del geometry["n_splits"]
            ops.attn_decode_rope_rows(
                b["act.qkv"], kc, vc, b["act.attn"], self.base["state.pos"], b["attn.part"],
                b["attn.counters"], cos, sin, rows=self.rows, slots=b["batch.slots"],
                qkv_stride=c.q_dim + 2 * c.kv_dim, out_stride=c.q_dim,
                slot_kv=self.slot_bytes["kv.k"] // 2, rope_half=c.rope_dim // 2,
                neox=c.rope_style == "neox", max_splits=splits, **self._qk_norms(lw),
                **geometry,
            )  # fmt: skip
            return
        if self.fuse_rope:
            ops.attn_decode_rope(
                b["act.qkv"], kc, vc, b["act.attn"], b["state.pos"], b["attn.part"],
                b["attn.counters"], cos, sin, rope_half=c.rope_dim // 2,
                neox=c.rope_style == "neox", **self._qk_norms(lw), **geometry,
            )  # fmt: skip
            return
        self.rope_kv_write(i, lw, 1)
        ops.attn_decode(
            b["act.qkv"], kc, vc, b["act.attn"], b["state.pos"], b["attn.part"],
            b["attn.counters"], **geometry,
        )  # fmt: skip

    def attend_prefill(self, i: int, n: int, sinks: int | None = None) -> None:
        """act.attn (n, q_dim): causal attention of the chunk over layer i's cache (its window);
        `sinks`: gpt-oss's sink logit per head (`LayerWeights.attn_sinks`)."""
        c, b = self.c, self.b
        kc, vc = self.layer_kv(i)
        self.ops.attn_prefill(
            b["act.qkv"], kc, vc, b["act.attn"], b["state.pos"], n, n_heads=c.n_heads,
            n_kv=c.n_kv_heads, max_ctx=self.max_context, stream=self.stream, scale=c.attn_scale,
            window=c.layer_window[i], sinks=sinks,
        )  # fmt: skip

    def norm_ffn(self, lw: LayerWeights, n: int) -> None:
        """act.h (n, d_ff) = act(gate) * up of rmsnorm(x) * ffn_norm."""
        c, b = self.c, self.b
        if n == 1 and self.fuse_glu and len(lw.gate_up) == 1 and self.rows:
            g = lw.gate_up[0]
            self.q.matvec_norm_glu_rows(
                g.qtype, g.ptr, c.d_ff, g.cols, b["act.x"], lw.ffn_norm, c.norm_eps, self.rows,
                b["act.h"], self.stream, xs=c.d_model, ys=c.d_ff, act=c.ffn_act, pdl=self.pdl,
            )  # fmt: skip
            return
        if n == 1 and self.fuse_glu and len(lw.gate_up) == 1:
            g = lw.gate_up[0]
            self.q.matvec_norm_glu(
                g.qtype, g.ptr, c.d_ff, g.cols, b["act.x"], lw.ffn_norm, c.norm_eps, b["act.h"],
                self.stream, act=c.ffn_act, pdl=self.pdl,
            )  # fmt: skip
            return
        self.rms_norm(b["act.x"], lw.ffn_norm, b["act.xn"], n)
        self.ffn(lw, n)

    def ffn(self, lw: LayerWeights, n: int) -> None:
        """act.h = act(gate) * up of act.xn: the input already normed."""
        c, b = self.c, self.b
        self.project(lw.gate_up, b["act.xn"], b["act.gate_up"], n, 2 * c.d_ff, None)
        self.ops.glu(
            b["act.gate_up"], b["act.h"], c.d_ff, self._n(n), self.stream, act=c.ffn_act,
            pdl=self.pdl and n == 1,
        )  # fmt: skip

    def post_norm(self, y: int, w_post: int, n: int, w_next: int | None = None) -> None:
        """act.x += rmsnorm(y) * w_post; with w_next also act.xn = rmsnorm(act.x) * w_next (the
        next projection's input, same launch). y may be act.xn."""
        c, b = self.c, self.b
        self.ops.add_rms_norm(
            y, w_post, b["act.x"], self._n(n), c.d_model, c.norm_eps, self.stream, w_next=w_next,
            xn=None if w_next is None else b["act.xn"], pdl=self.pdl and n == 1,
        )  # fmt: skip
