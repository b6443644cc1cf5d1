"""The forward pass on the GPU: buffers allocated once at load, a decode step and a prefill chunk
enqueued as kernel launches on one stream, around the model family's block.

The block (`cuda.models.<block>`, picked by `model.family.block`) writes one layer as steps of
cuda/layers.py; this module owns what every family shares: the buffer table (which drives both
allocation and the VRAM estimate), the rotary tables (one per distinct rope base), the
embedding, the output head, the sampling mask, the step's greedy argmax and the two passes.

Slots: the engine holds `max_batch` sequences. What is a sequence's own (its KV cache, token
ids, position, logits and the mask's saved logits) is one row per slot of the buffers in
`SLOT_BUFFERS`; everything else (activations, attention partials, the argmax's scratch) is
shared, since the slots' passes run one after another on one stream. `bind(slot)` points `b` at
a slot's rows: the layer steps, written for one sequence, then work on that slot unchanged.

Everything a step reads that changes from step to step lives in device memory: the token id
(the slot's `ids[0]`, written by the sampler or uploaded by the engine) and the position (the
slot's `pos`, advanced by the last kernel of each pass). So `enqueue_decode` issues the very
same launches every step and the engine captures it once per slot as a CUDA graph (one per
attention split count). A prefill chunk runs matrix-matrix products over all its tokens: no
launch is made per token.
"""

from __future__ import annotations

import math
from types import ModuleType
from typing import Any

import numpy as np

from cuda import residency
from cuda.forward_rows import RowsPass
from cuda.layers import Layers
from cuda.ledger import Ledger
from cuda.ops import ARGMAX_BLOCKS, Ops
from cuda.sampler import SampleMask
from cuda.weights import ModelWeights
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


#: the buffers that hold one row per slot (axis 0 is the slot); `Forward.bind` picks the row
SLOT_BUFFERS = ("kv.k", "kv.v", "state.ids", "state.pos", "act.logits", "mask.saved")


def buffer_shapes(
    c: ModelConfig, max_context: int, max_chunk: int, n_masked: int = 0, max_batch: int = 1
) -> dict[str, tuple]:
    """name -> (numpy dtype, shape) of every non-weight model-state buffer; `n_masked`: ids the
    sampling mask keeps from sampling (`SampleMask.ids`); `max_batch`: slots (SLOT_BUFFERS)."""
    qkv_dim = c.q_dim + 2 * c.kv_dim
    # with several slots, one more: the padding rows' of the batched step (cuda/forward_rows.py)
    slots = max_batch + 1 if max_batch > 1 else 1
    kv = (slots, c.n_layers, c.n_kv_heads, max_context, c.head_dim)
    max_chunk = max(max_chunk, max_batch)  # the activation rows: a chunk's, or a batch's
    shapes: dict[str, tuple] = {
        "kv.k": (np.float16, kv),  # (slot, n_layers, n_kv_heads, max_context, head_dim)
        "kv.v": (np.float16, kv),
    }
    for k in range(len(c.rope_bases)):  # (max_context, rope_dim / 2) per distinct base
        shapes[f"rope.{k}.cos"] = (np.float32, (max_context, c.rope_dim // 2))
        shapes[f"rope.{k}.sin"] = (np.float32, (max_context, c.rope_dim // 2))
    shapes |= {
        "act.x": (np.float32, (max_chunk, c.d_model)),  # residual stream
        # normed input of a projection; gemma3: a projection's output before its post-norm
        "act.xn": (np.float32, (max_chunk, c.d_model)),
        "act.qkv": (np.float32, (max_chunk, qkv_dim)),  # q | k | v rows
        "act.attn": (np.float32, (max_chunk, c.q_dim)),  # attention output (q_dim, not d_model)
    }
    if c.moe is None:  # a dense FFN
        shapes |= {
            "act.gate_up": (np.float32, (max_chunk, 2 * c.d_ff)),  # gate | up rows
            "act.h": (np.float32, (max_chunk, c.d_ff)),  # act(gate) * up
        }
    else:  # a mixture of experts (cuda/moe_ops.py); activations, shared by the slots
        m = c.moe
        shapes |= {
            "moe.logits": (np.float32, (max_chunk, m.n_experts)),  # router logits
            "moe.ids": (np.int32, (max_chunk, m.top_k)),  # each token's chosen experts
            "moe.weights": (np.float32, (max_chunk, m.top_k)),  # and their weights
            "moe.h": (np.float32, (max_chunk, m.top_k, m.d_ff)),  # each one's activation
        }
    shapes |= {
        "act.logits": (np.float32, (slots, c.vocab_size)),  # last position's logits
        "state.ids": (np.int32, (slots, max_chunk)),  # token ids of the pass; [0] in decode
        "state.pos": (np.int32, (slots,)),  # tokens in the cache before the pass
        # split partials (n_heads, MAX_SPLITS, head_dim + 2) and blocks done per head (reset
        # by the last), a row each for the batched step's rows (row 0: the single step's)
        "attn.part": (np.float32, (max_batch, c.n_heads, MAX_SPLITS, c.head_dim + 2)),
        "attn.counters": (np.uint32, (max_batch, c.n_heads)),
        "greedy.part_v": (np.float32, (max_batch, ARGMAX_BLOCKS)),  # per-block argmax maxima
        "greedy.part_i": (np.int32, (max_batch, ARGMAX_BLOCKS)),  # and their ids
        "greedy.counter": (np.uint32, (max_batch,)),  # blocks done (reset by the last)
        "batch.slots": (np.int32, (max_batch,)),  # the batched step's row -> slot
        "batch.ids": (np.int32, (max_batch,)),  # its rows' token ids
        "batch.out": (np.int32, (max_batch,)),  # and their greedy choices
    }
    if n_masked:
        shapes["mask.ids"] = (np.int32, (n_masked,))  # ids never sampled
        shapes["mask.saved"] = (np.float32, (slots, n_masked))  # logits before the mask
    return shapes


def buffer_bytes(
    c: ModelConfig, max_context: int, max_chunk: int, n_masked: int = 0, max_batch: int = 1
) -> int:
    shapes = buffer_shapes(c, max_context, max_chunk, n_masked, max_batch).values()
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


def _moe_kernels() -> Any:
    from cuda.moe_ops import MoeKernels

    return MoeKernels()


class Forward(Layers, RowsPass):
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
        block: ModuleType,
        mask: SampleMask,
        max_context: int,
        max_chunk: int,
        max_batch: int = 1,
        fuse: bool = True,
        pdl: bool = True,
    ):
        self.c, self.w, self.ops, self.stream, self.drv = c, w, ops, stream, drv
        self.block, self.mask = block, mask  # cuda.models.<block>; what sampling may pick
        # each slot's sampled id comes back through this small pinned buffer (not model state)
        self.token_host = drv.pagelocked_empty((max_batch,), np.int32)
        self.rows_host = drv.pagelocked_empty((max_batch,), np.int32)  # the batched step's
        self.q = _Counting(quant)
        # the mixture-of-experts kernels, for a family with experts (compiled here: only then)
        self.moe = _Counting(_moe_kernels()) if c.moe is not None else None
        self.max_context, self.max_chunk, self.max_batch = max_context, max_chunk, max_batch
        self.max_splits = splits_for(max_context)
        self.base: dict[str, int] = {}  # buffer name -> its allocation (slot 0's row)
        self.slot_bytes: dict[str, int] = {}  # SLOT_BUFFERS -> bytes of one slot's row
        shapes = buffer_shapes(c, max_context, max_chunk, mask.ids.size, max_batch)
        for name, (dt, shape) in shapes.items():
            nbytes = np.dtype(dt).itemsize * math.prod(shape)
            self.base[name] = ledger.alloc(
                name, nbytes, zero=name.startswith(("state.", "attn.", "greedy.", "batch."))
            )
            if name in SLOT_BUFFERS:
                self.slot_bytes[name] = nbytes // shape[0]
        self.slot = 0
        self.b: dict[str, int] = dict(self.base)  # the buffers as the bound slot sees them
        #: residency checksums of the buffers that hold constants (rope tables, the mask ids)
        self.checksums: dict[str, int] = {}
        for k, base in enumerate(c.rope_bases):
            cos, sin = rope_tables(max_context, c.rope_dim, base, c.rope_yarn)
            self._constant(f"rope.{k}.cos", cos)
            self._constant(f"rope.{k}.sin", sin)
        if mask.ids.size:
            self._constant("mask.ids", mask.ids)
        self._layer_kv = c.n_kv_heads * max_context * c.head_dim * 2  # bytes per layer and slot
        # fused decode kernels, where the layout and the quant kernels allow them
        self.fuse_norm = fuse and hasattr(quant, "matvec_norm")
        self.fuse_glu = fuse and hasattr(quant, "matvec_norm_glu")
        self.fuse_rope = fuse and ops.rope_fusable(c.rope_dim // 2, c.rope_style == "neox")
        # programmatic dependent launch for the decode step's kernels after the first
        self.pdl = pdl

    def bind(self, slot: int) -> None:
        """Point `b` at `slot`'s rows of the per-slot buffers: what is enqueued next is that
        slot's pass (a graph captured after bind(s) replays slot s's)."""
        self.slot = slot
        for name, step in self.slot_bytes.items():
            self.b[name] = self.base[name] + slot * step

    def slot_ptr(self, name: str, slot: int) -> int:
        """Device address of `slot`'s row of the per-slot buffer `name`."""
        return self.base[name] + slot * self.slot_bytes[name]

    def _constant(self, name: str, data: np.ndarray) -> None:
        data = np.ascontiguousarray(data)
        self.drv.memcpy_htod(self.b[name], data)
        checksum = residency.window_checksum(data)
        if checksum is not None:
            self.checksums[name] = checksum

    # -- what every family shares ----------------------------------------------------------------

    def _embed(self, n: int) -> None:
        """act.x (n, d_model) = token_embd rows of ids[0:n], times the family's embed_scale."""
        e = self.w.token_embd
        self.q.embed_rows(
            e.qtype, e.ptr, e.cols, self.b["state.ids"], n, self.b["act.x"], self.stream,
            scale=self.c.embed_scale,
        )  # fmt: skip

    def _head(self, row: int) -> None:
        """logits = output @ rmsnorm(x[row]) for one row of the residual stream, then the
        sampling mask where the unsampleable ids are not a suffix."""
        c, b, s, o = self.c, self.b, self.stream, self.w.output
        x_row = b["act.x"] + 4 * row * c.d_model
        if self.fuse_norm:  # (PDL is safe after any kernel: the head waits before reading x)
            self.q.matvec_norm(
                o.qtype, o.ptr, o.rows, o.cols, x_row, self.w.output_norm, c.norm_eps,
                b["act.logits"], s, pdl=self.pdl,
            )  # fmt: skip
        else:
            self.ops.rms_norm(
                x_row, self.w.output_norm, b["act.xn"], 1, c.d_model, c.norm_eps, s, pdl=self.pdl
            )
            self.q.matvec(
                o.qtype, o.ptr, o.rows, o.cols, b["act.xn"], b["act.logits"], s, pdl=self.pdl
            )
        if self.mask.ids.size:
            self.ops.mask_logits(
                b["act.logits"], b["mask.ids"], b["mask.saved"], self.mask.ids.size, s,
                pdl=self.pdl,
            )  # fmt: skip

    def logits(self, slot: int) -> np.ndarray:
        """Slot's last pass's logits (vocab,), unmasked: the mask's ids get back the head's
        values."""
        s = self.stream
        out = np.empty(self.c.vocab_size, np.float32)
        self.drv.memcpy_dtoh_async(out, self.slot_ptr("act.logits", slot), s)
        saved = np.empty(self.mask.ids.size, np.float32)
        if saved.size:
            self.drv.memcpy_dtoh_async(saved, self.slot_ptr("mask.saved", slot), s)
        s.synchronize()
        out[self.mask.ids] = saved
        return out

    # -- passes ----------------------------------------------------------------------------------

    def enqueue_decode(self, splits: int | None = None) -> int:
        """The bound slot's token (ids[0]) at position *pos; advances *pos. Returns the launches
        made.

        `splits`: thread blocks per head of the decode attention (default: the most the context
        needs); any value works for any position, fewer are faster on short sequences.
        The step ends with the greedy choice (argmax over the sampleable logits, no penalty)
        written to ids[0] and copied to the slot's `token_host`, so a greedy generation loop only has to
        wait for the step: the most common request needs no launch of its own (other sampling
        overwrites ids[0])."""
        splits = self.max_splits if splits is None else splits
        start = self._launches()
        # the step's first kernel runs without PDL: it starts after everything before it is
        # done, which lets later kernels read the position and older KV rows before waiting
        self._embed(1)
        for i, lw in enumerate(self.w.layers):
            self.block.decode_layer(self, i, lw, splits)
        self._head(0)
        b = self.b
        self.ops.argmax(  # ... and the position moves on in its last block
            b["act.logits"], self.mask.n_sampled, b["greedy.part_v"], b["greedy.part_i"],
            b["greedy.counter"], b["state.ids"], self.stream, pos=b["state.pos"], advance=1,
            pdl=self.pdl,
        )  # fmt: skip
        slot = self.slot
        self.drv.memcpy_dtoh_async(self.token_host[slot : slot + 1], b["state.ids"], self.stream)
        return self._launches() - start

    def _launches(self) -> int:
        return self.ops.launches + self.q.launches + (self.moe.launches if self.moe else 0)

    def enqueue_prefill(self, n: int) -> None:
        """n (<= max_chunk) tokens already in the bound slot's ids[0:n], from position *pos;
        advances *pos."""
        assert 1 <= n <= self.max_chunk
        self._embed(n)
        for i, lw in enumerate(self.w.layers):
            self.block.prefill_layer(self, i, lw, n)
        self._head(n - 1)
        self.ops.advance_position(self.b["state.pos"], n, self.stream)
