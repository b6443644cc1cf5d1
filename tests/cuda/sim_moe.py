"""The simulated GPU's mixture-of-experts kernels (cuda/kernels/moe.cu), from their contracts.

moe_topk: each token's k largest router logits (NaN as -inf, ties to the lower expert), largest
first, and the softmax over those k. moe_gate_up[_norm]_<type>: for each chosen expert e, gpt-oss's
clamped SwiGLU of W_gate[e] @ xn + b_gate[e] and W_up[e] @ xn + b_up[e] (xn = rmsnorm(x) * g for
the _norm form). moe_down_<type>: y (+)= sum_j w_j (W_down[e_j] @ h_j + b_down[e_j]), in the
order top-k chose them. The grids are checked to cover every output row.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from gguf import GGMLQuantizationType as Q

from runtime.quants import row_bytes
from tests.cuda.sim_gpu import Launch, Sim, SimFault, _rms, _split_type, _store

WARPS = 4  # MOE_WARPS: output rows per block


def k_topk(sim: Sim, ln: Launch, _d) -> None:
    logits, n_experts, k, ids, weights = ln.args
    n = ln.grid[0]
    x = sim.f32(logits, n * n_experts).reshape(n, n_experts).astype(np.float64)
    x = np.where(np.isnan(x), -np.inf, x)
    chosen = np.argsort(-x, axis=1, kind="stable")[:, :k]
    top = np.take_along_axis(x, chosen, axis=1)
    w = np.exp(top - top[:, :1])
    sim.i32(ids, n * k)[:] = chosen.reshape(-1)
    sim.f32(weights, n * k)[:] = (w / w.sum(axis=1, keepdims=True)).reshape(-1)


def _expert(sim: Sim, ptr: int, qtype: Q, e: int, rows: int, cols: int) -> np.ndarray:
    """Expert e's (rows, cols) float32 matrix of a stack of raw GGML rows."""
    return sim.matrix(ptr + e * rows * row_bytes(qtype, cols), qtype, rows, cols)


def _clamped_swiglu(gate, up, alpha: float, limit: float):
    gate = np.where(gate > limit, limit, gate)  # comparisons: NaN stays NaN
    up = np.where(up > limit, limit, np.where(up < -limit, -limit, up))
    with np.errstate(over="ignore"):
        return (up + 1.0) * (gate / (1.0 + np.exp(-alpha * gate)))


def k_gate_up(sim: Sim, ln: Launch, _d, qtype: Q, norm: bool) -> None:
    wg, wu, bg, bu, d_ff, cols, x, g, eps, ids, k, alpha, limit, h = ln.args
    if ln.grid[0] * WARPS < d_ff or ln.grid[1] % k:
        raise SimFault(f"moe_gate_up grid {ln.grid} for {d_ff} rows, top-{k}")
    n = ln.grid[1] // k
    xs = sim.f32(x, n * cols).reshape(n, cols).astype(np.float64)
    if norm:
        xs = _rms(xs, sim.f32(g, cols), eps)
    chosen = sim.i32(ids, n * k).reshape(n, k)
    out = sim.f32(h, n * k * d_ff).reshape(n, k, d_ff)
    for t in range(n):
        for j, e in enumerate(chosen[t]):
            e = int(e)
            gate = _expert(sim, wg, qtype, e, d_ff, cols) @ xs[t] + sim.f32(bg + 4 * e * d_ff, d_ff)
            up = _expert(sim, wu, qtype, e, d_ff, cols) @ xs[t] + sim.f32(bu + 4 * e * d_ff, d_ff)
            out[t, j] = _clamped_swiglu(gate, up, alpha, limit)


def k_down(sim: Sim, ln: Launch, _d, qtype: Q) -> None:
    wd, bd, rows, d_ff, h, ids, wts, k, y, accumulate = ln.args
    if ln.grid[0] * WARPS < rows:
        raise SimFault(f"moe_down grid {ln.grid} for {rows} rows")
    n = ln.grid[1]
    hs = sim.f32(h, n * k * d_ff).reshape(n, k, d_ff).astype(np.float64)
    chosen, w = sim.i32(ids, n * k).reshape(n, k), sim.f32(wts, n * k).reshape(n, k)
    ys = sim.f32(y, n * rows).reshape(n, rows)
    for t in range(n):
        total = np.zeros(rows)
        for j, e in enumerate(chosen[t]):
            e = int(e)
            value = _expert(sim, wd, qtype, e, rows, d_ff) @ hs[t, j]
            total += float(w[t, j]) * (value + sim.f32(bd + 4 * e * rows, rows))
        _store(ys[t], total, accumulate)


def resolve_moe(name: str) -> Callable[[Sim, Launch, dict], None]:
    if name == "moe_topk":
        return k_topk
    kind, qtype = _split_type(name)
    if kind in ("moe_gate_up", "moe_gate_up_norm"):
        norm = kind.endswith("_norm")
        return lambda sim, ln, d: k_gate_up(sim, ln, d, qtype, norm)
    if kind == "moe_down":
        return lambda sim, ln, d: k_down(sim, ln, d, qtype)
    raise KeyError(f"the simulated GPU has no kernel {name!r}")
