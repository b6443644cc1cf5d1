"""The llama forward pass on the GPU: buffers allocated once at load, a decode step and a
prefill chunk enqueued as kernel launches on one stream.

Everything a step reads that changes from step to step lives in device memory: the token id
(`ids[0]`, written by the sampler or uploaded by the engine) and the position (`pos`, advanced by
the last kernel of each pass). So `enqueue_decode` issues the very same launches every step and
the engine captures it once as a CUDA graph. Per layer of a decode step:

    rms_norm -> qkv matvec -> rope + KV write -> attention (split over the sequence)
    -> o matvec accumulated into the residual -> rms_norm -> gate|up matvec -> SwiGLU
    -> down matvec accumulated into the residual

Prefill runs the same sequence with matrix-matrix products over the chunk and causal attention.
A projection group whose matrices differ in type (q | k | v of a mixed-quant file) runs one
product per matrix for all the chunk's tokens, each into its columns of the group's output, with
qwen2's bias added in the product's epilogue; in the decode step such a group (or any biased one)
is one segmented matvec launch with the RMSNorm and the bias fused. No launch is made per token.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from cuda.ledger import Ledger
from cuda.ops import ARGMAX_BLOCKS, Ops
from cuda.weights import ModelWeights, Segment
from runtime.model_config import ModelConfig
from runtime.numpy_layers import rope_tables

_SPLIT_KEYS = 32  # decode attention: a split (thread block) per this many keys ...
MAX_SPLITS = 32  # ... up to this many blocks per head (MAX_SPLITS in attention.cu is >= this)


def split_levels(max_context: int) -> tuple[int, ...]:
    """The split counts the decode step is captured with: powers of two up to what the context
    can use (one graph each; the engine replays the one that fits the current length)."""
    top = splits_for(max_context)
    return tuple(1 << i for i in range(top.bit_length()))


def splits_for(seq_len: int) -> int:
    """Splits for attention over seq_len keys: the power of two >= seq_len / 32, at most 32.
    One split needs no merge; more splits put more blocks on long sequences."""
    need = max(1, math.ceil(seq_len / _SPLIT_KEYS))
    return min(MAX_SPLITS, 1 << (need - 1).bit_length())


def buffer_shapes(c: ModelConfig, max_context: int, max_chunk: int) -> dict[str, tuple]:
    """name -> (numpy dtype, shape) of every non-weight model-state buffer."""
    q_dim, qkv_dim = c.n_heads * c.head_dim, c.n_heads * c.head_dim + 2 * c.kv_dim
    kv = (c.n_layers, c.n_kv_heads, max_context, c.head_dim)
    splits = splits_for(max_context)
    return {
        "kv.k": (np.float16, kv),  # (n_layers, n_kv_heads, max_context, head_dim)
        "kv.v": (np.float16, kv),
        "rope.cos": (np.float32, (max_context, c.rope_dim // 2)),
        "rope.sin": (np.float32, (max_context, c.rope_dim // 2)),
        "act.x": (np.float32, (max_chunk, c.d_model)),  # residual stream
        "act.xn": (np.float32, (max_chunk, c.d_model)),  # normed input of a projection
        "act.qkv": (np.float32, (max_chunk, qkv_dim)),  # q | k | v rows
        "act.attn": (np.float32, (max_chunk, q_dim)),  # attention output
        "act.gate_up": (np.float32, (max_chunk, 2 * c.d_ff)),  # gate | up rows
        "act.h": (np.float32, (max_chunk, c.d_ff)),  # SwiGLU output
        "act.logits": (np.float32, (c.vocab_size,)),  # last position's logits
        "state.ids": (np.int32, (max_chunk,)),  # token ids of the pass; ids[0] in decode
        "state.pos": (np.int32, (1,)),  # tokens in the cache before the pass
        "attn.part": (np.float32, (c.n_heads, splits, c.head_dim + 2)),  # split partials
        "attn.counters": (np.uint32, (c.n_heads,)),  # blocks done per head (reset by the last)
        "greedy.part_v": (np.float32, (ARGMAX_BLOCKS,)),  # per-block maxima of the argmax
        "greedy.part_i": (np.int32, (ARGMAX_BLOCKS,)),  # and their ids
        "greedy.counter": (np.uint32, (1,)),  # blocks done (reset by the last)
    }


def buffer_bytes(c: ModelConfig, max_context: int, max_chunk: int) -> int:
    shapes = buffer_shapes(c, max_context, max_chunk).values()
    return sum(np.dtype(dt).itemsize * math.prod(shape) for dt, shape in shapes)


class _Counting:
    """Counts the launches made through the quant kernels (for the graph's launch count)."""

    def __init__(self, quant: Any):
        self._quant, self.launches = quant, 0

    def __getattr__(self, name: str) -> Any:
        fn = getattr(self._quant, name)

        def counted(*args: Any, **kwargs: Any) -> Any:
            self.launches += 1
            return fn(*args, **kwargs)

        return counted


class Forward:
    def __init__(
        self,
        drv: Any,
        c: ModelConfig,
        w: ModelWeights,
        ledger: Ledger,
        ops: Ops,
        quant: Any,
        stream: Any,
        *,
        max_context: int,
        max_chunk: int,
        fuse: bool = True,
        pdl: bool = True,
    ):
        self.c, self.w, self.ops, self.stream, self.drv = c, w, ops, stream, drv
        # the sampled id comes back through this small pinned buffer (not model state)
        self.token_host = drv.pagelocked_empty((1,), np.int32)
        self.q = _Counting(quant)
        self.max_context, self.max_chunk = max_context, max_chunk
        self.max_splits = splits_for(max_context)
        self.b: dict[str, int] = {}
        for name, (dt, shape) in buffer_shapes(c, max_context, max_chunk).items():
            nbytes = np.dtype(dt).itemsize * math.prod(shape)
            self.b[name] = ledger.alloc(
                name, nbytes, zero=name.startswith(("state.", "attn.", "greedy."))
            )
        cos, sin = rope_tables(max_context, c.rope_dim, c.rope_base)
        drv.memcpy_htod(self.b["rope.cos"], np.ascontiguousarray(cos))
        drv.memcpy_htod(self.b["rope.sin"], np.ascontiguousarray(sin))
        self._layer_kv = c.n_kv_heads * max_context * c.head_dim * 2  # bytes per layer
        # fused decode kernels, where the layout and the quant kernels allow them
        self.fuse_norm = fuse and hasattr(quant, "matvec_norm")
        self.fuse_glu = fuse and hasattr(quant, "matvec_norm_glu")
        self.fuse_rope = fuse and ops.rope_fusable(c.rope_dim // 2, c.rope_style == "neox")
        # programmatic dependent launch for the decode step's kernels after the first
        self.pdl = pdl

    # -- pieces ----------------------------------------------------------------------------------

    def _project(
        self, segs: tuple[Segment, ...], x: int, y: int, n: int, width: int, bias: int | None
    ) -> None:
        """y (n, width) = x (n, cols) @ W.T (+ bias), one product per segment, each writing its
        column slice [row0, row0 + rows) of y for all n rows at once (no launch per token)."""
        for sg in segs:
            b = None if bias is None else bias + 4 * sg.row0
            if n == 1:
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

    def _project_normed(
        self, segs: tuple[Segment, ...], norm_w: int, y: int, bias: int | None
    ) -> None:
        """Decode: y = W @ (rmsnorm(x) * norm_w) (+ bias) in one launch: the plain fused kernel
        for one segment without bias, else the segmented one (mixed types, qwen2's bias)."""
        c, x = self.c, self.b["act.x"]
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

    def _residual(self, seg: Segment, x: int, n: int) -> None:
        """residual (n, d_model) += x (n, cols) @ W.T: the residual add fused into the product."""
        b, s = self.b, self.stream
        if n == 1:
            self.q.matvec(
                seg.qtype, seg.ptr, seg.rows, seg.cols, x, b["act.x"], s, accumulate=True,
                pdl=self.pdl,
            )  # fmt: skip
        else:
            self.q.matmul(
                seg.qtype, seg.ptr, seg.rows, seg.cols, x, n, b["act.x"], s, accumulate=True
            )

    def _layers(self, n: int, splits: int | None = None) -> None:
        c, b, ops, s = self.c, self.b, self.ops, self.stream
        pdl = self.pdl and n == 1  # the unfused decode step
        q_dim = c.n_heads * c.head_dim
        qkv_dim = q_dim + 2 * c.kv_dim
        for i, lw in enumerate(self.w.layers):
            kc, vc = b["kv.k"] + i * self._layer_kv, b["kv.v"] + i * self._layer_kv
            ops.rms_norm(
                b["act.x"], lw.attn_norm, b["act.xn"], n, c.d_model, c.norm_eps, s, pdl=pdl
            )
            self._project(lw.qkv, b["act.xn"], b["act.qkv"], n, qkv_dim, lw.qkv_bias)
            ops.rope_kv_write(
                b["act.qkv"], n, b["state.pos"], b["rope.cos"], b["rope.sin"], kc, vc,
                n_heads=c.n_heads, n_kv=c.n_kv_heads, rope_half=c.rope_dim // 2,
                max_ctx=self.max_context, neox=c.rope_style == "neox", stream=s, pdl=pdl,
            )  # fmt: skip
            if n == 1:
                ops.attn_decode(
                    b["act.qkv"], kc, vc, b["act.attn"], b["state.pos"], b["attn.part"],
                    b["attn.counters"], n_heads=c.n_heads, n_kv=c.n_kv_heads,
                    max_ctx=self.max_context, n_splits=splits or self.max_splits, stream=s,
                    pdl=pdl,
                )  # fmt: skip
            else:
                ops.attn_prefill(
                    b["act.qkv"], kc, vc, b["act.attn"], b["state.pos"], n, n_heads=c.n_heads,
                    n_kv=c.n_kv_heads, max_ctx=self.max_context, stream=s,
                )  # fmt: skip
            self._residual(lw.attn_output, b["act.attn"], n)
            ops.rms_norm(b["act.x"], lw.ffn_norm, b["act.xn"], n, c.d_model, c.norm_eps, s, pdl=pdl)
            self._project(lw.gate_up, b["act.xn"], b["act.gate_up"], n, 2 * c.d_ff, None)
            ops.glu(b["act.gate_up"], b["act.h"], c.d_ff, n, s, pdl=pdl)
            self._residual(lw.down, b["act.h"], n)

    def _decode_layers(self, splits: int) -> None:
        """The decode step's layers with the fused kernels (5 launches per llama / qwen2 layer)."""
        c, b, ops, s, q, pdl = self.c, self.b, self.ops, self.stream, self.q, self.pdl
        qkv_dim = c.n_heads * c.head_dim + 2 * c.kv_dim
        for i, lw in enumerate(self.w.layers):
            kc, vc = b["kv.k"] + i * self._layer_kv, b["kv.v"] + i * self._layer_kv
            if self.fuse_norm:
                self._project_normed(lw.qkv, lw.attn_norm, b["act.qkv"], lw.qkv_bias)
            else:
                ops.rms_norm(
                    b["act.x"], lw.attn_norm, b["act.xn"], 1, c.d_model, c.norm_eps, s, pdl=pdl
                )
                self._project(lw.qkv, b["act.xn"], b["act.qkv"], 1, qkv_dim, lw.qkv_bias)
            geometry = dict(n_heads=c.n_heads, n_kv=c.n_kv_heads, max_ctx=self.max_context)
            if self.fuse_rope:
                ops.attn_decode_rope(
                    b["act.qkv"], kc, vc, b["act.attn"], b["state.pos"], b["attn.part"],
                    b["attn.counters"], b["rope.cos"], b["rope.sin"], **geometry,
                    rope_half=c.rope_dim // 2, neox=c.rope_style == "neox",
                    n_splits=splits, stream=s, pdl=pdl,
                )  # fmt: skip
            else:
                ops.rope_kv_write(
                    b["act.qkv"], 1, b["state.pos"], b["rope.cos"], b["rope.sin"], kc, vc,
                    n_heads=c.n_heads, n_kv=c.n_kv_heads, rope_half=c.rope_dim // 2,
                    max_ctx=self.max_context, neox=c.rope_style == "neox", stream=s, pdl=pdl,
                )  # fmt: skip
                ops.attn_decode(
                    b["act.qkv"], kc, vc, b["act.attn"], b["state.pos"], b["attn.part"],
                    b["attn.counters"], **geometry, n_splits=splits, stream=s, pdl=pdl,
                )  # fmt: skip
            self._residual(lw.attn_output, b["act.attn"], 1)
            if self.fuse_glu and len(lw.gate_up) == 1:
                g = lw.gate_up[0]
                q.matvec_norm_glu(
                    g.qtype, g.ptr, c.d_ff, g.cols, b["act.x"], lw.ffn_norm, c.norm_eps,
                    b["act.h"], s, pdl=pdl,
                )  # fmt: skip
            else:
                ops.rms_norm(
                    b["act.x"], lw.ffn_norm, b["act.xn"], 1, c.d_model, c.norm_eps, s, pdl=pdl
                )
                self._project(lw.gate_up, b["act.xn"], b["act.gate_up"], 1, 2 * c.d_ff, None)
                ops.glu(b["act.gate_up"], b["act.h"], c.d_ff, 1, s, pdl=pdl)
            self._residual(lw.down, b["act.h"], 1)

    def _head(self, row: int) -> None:
        """logits = output @ rmsnorm(x[row]) for one row of the residual stream."""
        c, b, s, o = self.c, self.b, self.stream, self.w.output
        x_row = b["act.x"] + 4 * row * c.d_model
        if self.fuse_norm:  # (PDL is safe after any kernel: the head waits before reading x)
            self.q.matvec_norm(
                o.qtype, o.ptr, o.rows, o.cols, x_row, self.w.output_norm, c.norm_eps,
                b["act.logits"], s, pdl=self.pdl,
            )  # fmt: skip
            return
        self.ops.rms_norm(
            x_row, self.w.output_norm, b["act.xn"], 1, c.d_model, c.norm_eps, s, pdl=self.pdl
        )
        self.q.matvec(o.qtype, o.ptr, o.rows, o.cols, b["act.xn"], b["act.logits"], s, pdl=self.pdl)

    # -- passes ----------------------------------------------------------------------------------

    def enqueue_decode(self, splits: int | None = None) -> int:
        """One token (ids[0]) at position *pos; advances *pos. Returns the launches made.

        `splits`: thread blocks per head of the decode attention (default: the most the context
        needs); any value works for any position, fewer are faster on short sequences.
        The step ends with the greedy choice (argmax, no penalty) written to ids[0] and copied
        to `token_host`, so a greedy generation loop only has to wait for the step: the most
        common request needs no launch of its own (other sampling overwrites ids[0])."""
        splits = self.max_splits if splits is None else splits
        start = self.ops.launches + self.q.launches
        e = self.w.token_embd
        # the step's first kernel runs without PDL: it starts after everything before it is
        # done, which lets later kernels read the position and older KV rows before waiting
        self.q.embed_rows(
            e.qtype, e.ptr, e.cols, self.b["state.ids"], 1, self.b["act.x"], self.stream
        )
        if self.fuse_norm or self.fuse_glu or self.fuse_rope:
            self._decode_layers(splits)
        else:
            self._layers(1, splits)
        self._head(0)
        b = self.b
        self.ops.argmax(  # ... and the position moves on in its last block
            b["act.logits"], self.c.vocab_size, b["greedy.part_v"], b["greedy.part_i"],
            b["greedy.counter"], b["state.ids"], self.stream, pos=b["state.pos"], advance=1,
            pdl=self.pdl,
        )  # fmt: skip
        self.drv.memcpy_dtoh_async(self.token_host, b["state.ids"], self.stream)
        return self.ops.launches + self.q.launches - start

    def enqueue_prefill(self, n: int) -> None:
        """n (<= max_chunk) tokens already in ids[0:n], from position *pos; advances *pos."""
        assert 1 <= n <= self.max_chunk
        e = self.w.token_embd
        self.q.embed_rows(
            e.qtype, e.ptr, e.cols, self.b["state.ids"], n, self.b["act.x"], self.stream
        )
        self._layers(n)
        self._head(n - 1)
        self.ops.advance_position(self.b["state.pos"], n, self.stream)
