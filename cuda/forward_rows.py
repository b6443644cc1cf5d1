"""The batched decode step: one pass for the next token of several sequences at once.

Row r of the pass is the sequence in slot `batch.slots[r]` (device int32, written by the engine
when the set of running slots changes). The activations are rows 0..k-1 of the pass buffers;
what is a sequence's own stays in its slot's rows: token id (gathered in, the greedy choice
scattered back), position (advanced by the last kernel), KV cache (the attention kernel takes
each row's slot) and logits (the head writes row r into slot slots[r]'s). The layer steps are
the family block's decode steps with `Forward.rows = k` (cuda/layers.py), whose kernels
compute each row as the single-sequence step computes it (decision 0028): a sequence's tokens
do not depend on the others in the batch.

A graph is captured per bucket of k (powers of two up to the engine's slots) and attention
split level; a batch smaller than its bucket fills the other rows with the padding slot (one
slot past the real ones: its position is never advanced, what it computes is never read).
"""

from __future__ import annotations

from typing import Any


def buckets(max_batch: int) -> tuple[int, ...]:
    """Row counts the batched step is captured for: 2, 4, 8, ... and max_batch itself."""
    out, k = [], 2
    while k < max_batch:
        out.append(k)
        k *= 2
    return (*out, max_batch) if max_batch >= 2 else ()


def bucket_for(n: int, max_batch: int) -> int:
    """The smallest bucket that holds n rows (2 <= n <= max_batch)."""
    return next(k for k in buckets(max_batch) if k >= n)


class RowsPass:
    """Mixin of `Forward` (cuda/forward.py): the batched decode step."""

    c: Any
    w: Any
    b: dict[str, int]
    base: dict[str, int]
    slot_bytes: dict[str, int]
    ops: Any
    q: Any
    stream: Any
    drv: Any
    block: Any
    mask: Any
    pdl: bool
    fuse_norm: bool
    fuse_glu: bool
    fuse_rope: bool
    rows: int
    max_batch: int
    rows_host: Any  # pinned int32 (max_batch,): the last batched step's greedy choices

    def rows_supported(self) -> bool:
        """Whether this model's decode steps have batched kernels (the fused decode kernels of
        every product type; gpt-oss's experts have none yet)."""
        if self.c.moe is not None or not (self.fuse_norm and self.fuse_glu and self.fuse_rope):
            return False
        w = self.w
        types = {g.qtype for lw in w.layers for grp in (lw.qkv, lw.gate_up) for g in grp}
        types |= {lw.attn_output.qtype for lw in w.layers} | {lw.down.qtype for lw in w.layers}
        return all(self.q.rows_supported(t) for t in types | {w.output.qtype})

    @property
    def scratch_slot(self) -> int:
        """The padding rows' slot: one past the real ones."""
        return self.max_batch

    def enqueue_decode_rows(self, k: int, splits: int) -> int:
        """The batched step for the k rows of batch.slots; `splits`: the attention grid (the
        most splits any row's length needs). Returns the launches made."""
        start = self._launches()
        self.bind(0)  # the layer steps address slot 0's rows; the kernels add each row's slot
        self.rows = k
        try:
            b, c, s = self.base, self.c, self.stream
            ids_stride = self.slot_bytes["state.ids"] // 4
            self.ops.gather_ids(b["state.ids"], b["batch.slots"], ids_stride, k, b["batch.ids"], s)
            e = self.w.token_embd
            self.q.embed_rows(
                e.qtype, e.ptr, e.cols, b["batch.ids"], k, b["act.x"], s, scale=c.embed_scale
            )
            for i, lw in enumerate(self.w.layers):
                self.block.decode_layer(self, i, lw, splits)
            self._head_rows(k)
            self.ops.argmax_rows(
                b["act.logits"], self.mask.n_sampled, b["greedy.part_v"], b["greedy.part_i"],
                b["greedy.counter"], b["state.ids"], b["state.pos"], b["batch.slots"], rows=k,
                logit_stride=c.vocab_size, ids_stride=ids_stride, scratch=self.scratch_slot,
                out_rows=b["batch.out"], stream=s, pdl=self.pdl,
            )  # fmt: skip
            self.ops.scatter_ids(
                b["batch.out"], b["batch.slots"], ids_stride, k, b["state.ids"], s, pdl=self.pdl
            )
            self.drv.memcpy_dtoh_async(self.rows_host[:k], b["batch.out"], s)
        finally:
            self.rows = 0
        return self._launches() - start

    def _head_rows(self, k: int) -> None:
        """Each row's logits into its slot's row of act.logits (the sampling mask after)."""
        c, b, o = self.c, self.base, self.w.output
        self.q.matvec_norm_rows(
            o.qtype, o.ptr, o.rows, o.cols, b["act.x"], self.w.output_norm, c.norm_eps, k,
            b["act.logits"], self.stream, xs=c.d_model, ys=c.vocab_size, yrow=b["batch.slots"],
            pdl=self.pdl,
        )  # fmt: skip
        if self.mask.ids.size:
            self.ops.mask_logits_rows(
                b["act.logits"], b["mask.ids"], b["mask.saved"], self.mask.ids.size,
                b["batch.slots"], k, c.vocab_size, self.stream, pdl=self.pdl,
            )  # fmt: skip

    def _launches(self) -> int:  # Forward's
        raise NotImplementedError
