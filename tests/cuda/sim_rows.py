"""The simulated GPU's batched decode step kernels (cuda/forward_rows.py, cuda/quant_rows.py).

Each batched kernel is run as its single-sequence kernel once per row, with the row's pointers
as the CUDA kernel derives them (its x / y rows, its slot's cache, position, logits): the
contract the batched kernels keep (decision 0028). The grids are checked as the GPU would
need them (enough token tiles, enough attention splits for every row).
"""

from __future__ import annotations

from collections.abc import Callable

from cuda.quant_rows import BATCH_TILE
from tests.cuda.sim_gpu import (
    Launch,
    Sim,
    SimFault,
    _split_type,
    k_argmax,
    k_mask_logits,
    k_matvec,
    k_matvec_norm,
    k_matvec_norm_glu,
    k_matvec_seg,
)

TILE = BATCH_TILE  # tokens per block of the batched products
ARGMAX_BLOCKS = 64  # cuda/ops.py's
MAX_SPLITS = 32


def _token_rows(sim: Sim, ln: Launch, n_tok: int, yrow: int) -> list[int]:
    if ln.grid[0] * TILE < n_tok:  # (token tiles, row-group blocks)
        raise SimFault(f"{ln.name}: grid {ln.grid} covers fewer than {n_tok} tokens")
    return [int(v) for v in sim.i32(yrow, n_tok)] if yrow else list(range(n_tok))


def _per_token(single: Callable, width: int) -> Callable:
    """A batched product: args = the single kernel's, then n_tok, xs, ys, yrow; x is argument
    3 of the single kernel (after W, rows, cols) and y argument `width - 2` (before accumulate)."""

    def run(sim: Sim, ln: Launch, d) -> None:
        *one, n_tok, xs, ys, yrow = ln.args
        for t, row in enumerate(_token_rows(sim, ln, n_tok, yrow)):
            args = list(one)
            args[3] += 4 * t * xs
            args[width - 2] += 4 * row * ys
            single(sim, Launch(ln.name, (ln.grid[1], 1), tuple(args), ln.letters), d)

    return run


def k_seg_rows(sim: Sim, ln: Launch, d) -> None:
    *one, n_tok, xs, ys, yrow = ln.args
    for t, row in enumerate(_token_rows(sim, ln, n_tok, yrow)):
        args = list(one)
        args[1] += 4 * t * xs  # x
        args[4] += 4 * row * ys  # y
        k_matvec_seg(sim, Launch(ln.name, (ln.grid[1], 1), tuple(args), ln.letters), d)


def k_attn_rows(sim: Sim, ln: Launch, d) -> None:
    from tests.cuda.sim_gpu import k_attn_decode_rope

    (qkv, kc, vc, out, pos_all, part, counters, cos, sin, qn, kn, eps, n_heads, n_kv, max_ctx,
     half, neox, scale, window, sinks, slots, qkv_stride, out_stride, slot_kv) = ln.args  # fmt: skip
    hd = int(d["HEAD_DIM"])
    for r in range(ln.grid[2]):
        slot = int(sim.i32(slots, ln.grid[2])[r])
        length = int(sim.i32(pos_all + 4 * slot, 1)[0]) + 1
        need, splits = (length + 31) // 32, 1
        while splits < need and splits < MAX_SPLITS:
            splits *= 2
        if splits > ln.grid[1]:
            raise SimFault(f"row {r} needs {splits} attention splits, the grid has {ln.grid[1]}")
        args = (
            qkv + 4 * r * qkv_stride, kc + 2 * slot * slot_kv, vc + 2 * slot * slot_kv,
            out + 4 * r * out_stride, pos_all + 4 * slot,
            part + 4 * r * n_heads * MAX_SPLITS * (hd + 2), counters + 4 * r * n_heads, cos,
            sin, qn, kn, eps, n_heads, n_kv, max_ctx, half, neox, scale, window,
        )  # fmt: skip
        name = "attn_decode_rope"
        if sinks:
            name, args = name + "_sinks", (*args, sinks)
        k_attn_decode_rope(sim, Launch(name, (n_heads, splits), args), d)


def k_argmax_rows(sim: Sim, ln: Launch, d) -> None:
    (logits, vocab, part_v, part_i, counters, ids, pos_all, slots, logit_stride, ids_stride,
     scratch, out_rows) = ln.args  # fmt: skip
    for r in range(ln.grid[1]):
        slot = int(sim.i32(slots, ln.grid[1])[r])
        args = (
            logits + 4 * slot * logit_stride, vocab, part_v + 4 * r * ARGMAX_BLOCKS,
            part_i + 4 * r * ARGMAX_BLOCKS, counters + 4 * r, out_rows + 4 * r,
            0 if slot == scratch else pos_all + 4 * slot, 1,
        )  # fmt: skip
        k_argmax(sim, Launch("argmax_multi", (ln.grid[0], 1), args), d)


def k_mask_rows(sim: Sim, ln: Launch, d) -> None:
    logits, ids, saved, n, slots, logit_stride = ln.args
    for r in range(ln.grid[1]):
        slot = int(sim.i32(slots, ln.grid[1])[r])
        args = (logits + 4 * slot * logit_stride, ids, saved + 4 * slot * n, n)
        k_mask_logits(sim, Launch("mask_logits", (ln.grid[0], 1), args), d)


def k_gather_ids(sim: Sim, ln: Launch, _d) -> None:
    ids, slots, stride, n, ids_rows = ln.args
    for r, slot in enumerate(sim.i32(slots, n)):
        sim.i32(ids_rows, n)[r] = sim.i32(ids + 4 * int(slot) * stride, 1)[0]


def k_scatter_ids(sim: Sim, ln: Launch, _d) -> None:
    out_rows, slots, stride, n, ids = ln.args
    for r, slot in enumerate(sim.i32(slots, n)):
        sim.i32(ids + 4 * int(slot) * stride, 1)[0] = sim.i32(out_rows, n)[r]


ROWS_FIXED = {
    "attn_decode_rope_rows": k_attn_rows,
    "argmax_rows": k_argmax_rows,
    "mask_logits_rows": k_mask_rows,
    "gather_ids": k_gather_ids,
    "scatter_ids": k_scatter_ids,
}


def resolve_rows(name: str) -> Callable:
    """mvb_<kind>_<cfg>[_<type>] and the batched step's other kernels."""
    if name in ROWS_FIXED:
        return ROWS_FIXED[name]
    kind = name.split("_")[1]
    if kind == "seg":
        return k_seg_rows
    _, qtype = _split_type(name)
    if kind == "mv":
        return _per_token(lambda s, ln, d: k_matvec(s, ln, d, qtype), 6)
    if kind == "norm":
        return _per_token(lambda s, ln, d: k_matvec_norm(s, ln, d, qtype), 8)
    act = kind  # swiglu / geglu
    return _per_token(lambda s, ln, d: k_matvec_norm_glu(s, ln, d, qtype, act), 8)
