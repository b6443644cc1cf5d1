"""Launchers for the mixture-of-experts kernels (cuda/kernels/moe.cu): top-k routing, the chosen
experts' gate|up products with gpt-oss's clamped SwiGLU, and their weighted down products.

As `cuda.quant_ops`: every launch is an async call on the caller's stream with no host sync, no
allocation and no argument that changes between decode steps; the chosen experts travel in
device memory (`ids`, `weights`, written by `topk`), so a decode step is graph capturable.
`pdl=True` launches with programmatic dependent launch (the kernels wait before reading what
earlier kernels wrote). The router's own product is an ordinary quant product with a bias
(`QuantKernels.matvec_seg` with the fused RMSNorm in decode, `matmul(bias_ptr=...)` in prefill).

Expert tensors are the file's bytes: (n_experts, rows, cols) rows of GGML blocks of any type the
quant kernels take (MXFP4 in gpt-oss). Shapes are checked here (ValueError).
"""

from __future__ import annotations

import logging
import warnings

from gguf import GGMLQuantizationType as Q

from cuda.compile import load_driver_module
from cuda.quant_ops import _TYPES, QuantKernels

log = logging.getLogger(__name__)

SOURCE = "moe.cu"
WARPS = 4  # MOE_WARPS: output rows per block
MAX_TOP_K = 8  # MOE_MAX_K
MAX_EXPERTS = 256  # MOE_MAX_EXPERTS
MAX_GRID_Y = 65535  # gate_up's grid.y is n_tokens * k; down's is n_tokens
_TOPK_ARGS = "PiiPP"  # logits, n_experts, k, ids, weights
_GATE_UP_ARGS = "PPPPiiPPfPiffP"  # Wg, Wu, bg, bu, d_ff, cols, x, g, eps, ids, k, alpha, limit, h
_DOWN_ARGS = "PPiiPPPiPi"  # Wd, bd, rows, d_ff, h, ids, weights, k, y, accumulate


def sources(moe) -> list[tuple]:
    """(file, defines) of the module MoeKernels loads, for a config's `moe` (none without)."""
    return [] if moe is None else [(SOURCE, None)]


def _driver_module():
    with warnings.catch_warnings(record=True) as caught:  # nvcc's notes: logged, not raised
        warnings.simplefilter("always")
        module = load_driver_module(SOURCE)
    for w in caught:
        log.warning("nvcc on %s: %s", SOURCE, w.message)
    return module


def _checked_experts(qtype, cols: int, k: int, what: str) -> Q:
    """The expert stacks' type, once it has kernels, `cols` suits it and `k` is in range."""
    qtype = Q(qtype)
    if qtype not in _TYPES:
        raise ValueError(f"no CUDA kernels for weight type {qtype.name}")
    problem = QuantKernels.matrix_problem(qtype, cols)
    if problem is not None:
        raise ValueError(f"{what}: {problem}")
    if not 0 < k <= MAX_TOP_K:
        raise ValueError(f"k must be in 1..{MAX_TOP_K}, got {k}")
    return qtype


class MoeKernels:
    """The MoE kernels of the current CUDA context, compiled (or taken from cache) at init."""

    def __init__(self) -> None:
        module = _driver_module()
        self._topk = module.get_function("moe_topk").prepare(_TOPK_ARGS)
        self._gate_up = {}
        self._down = {}
        for qtype, (suffix, _) in _TYPES.items():
            for norm in (False, True):
                name = f"moe_gate_up{'_norm' if norm else ''}_{suffix}"
                self._gate_up[qtype, norm] = module.get_function(name).prepare(_GATE_UP_ARGS)
            self._down[qtype] = module.get_function(f"moe_down_{suffix}").prepare(_DOWN_ARGS)
        self.launches = 0

    def topk(
        self, logits, n_tokens: int, n_experts: int, k: int, ids, weights, stream, *, pdl=False
    ) -> None:
        """ids (n_tokens, k) int32 = the experts of each token's k largest logits (n_tokens,
        n_experts) f32, largest first (ties: lower index); weights (n_tokens, k) f32 = the
        softmax over those k logits."""
        if not 0 < k <= min(n_experts, MAX_TOP_K) or n_experts > MAX_EXPERTS:
            raise ValueError(
                f"top-{k} of {n_experts} experts: need 0 < k <= n_experts, k <= {MAX_TOP_K}, "
                f"n_experts <= {MAX_EXPERTS}"
            )
        if n_tokens <= 0:
            return
        self._topk.prepared_async_call(
            (n_tokens, 1), (32, 1, 1), stream, int(logits), n_experts, k, int(ids), int(weights),
            pdl=pdl,
        )  # fmt: skip
        self.launches += 1

    def gate_up(
        self, qtype, w_gate, w_up, b_gate, b_up, d_ff: int, cols: int, x, n_tokens: int, ids,
        k: int, h, stream, *, alpha: float, limit: float, norm_w=None, eps: float = 0.0,
        pdl=False,
    ) -> None:  # fmt: skip
        """h (n_tokens, k, d_ff) = swiglu_clamped(W_gate[e] @ xn + b_gate[e], W_up[e] @ xn +
        b_up[e]) for e = ids[t, j]; W_* (n_experts, d_ff, cols) raw blocks, b_* (n_experts,
        d_ff) f32, x (n_tokens, cols) f32; xn = rmsnorm(x) * norm_w when `norm_w` is given."""
        qtype = _checked_experts(qtype, cols, k, "expert gate/up")
        if d_ff <= 0 or n_tokens <= 0:
            return
        if n_tokens * k > MAX_GRID_Y:
            raise ValueError(f"{n_tokens} tokens x {k} experts exceed one launch ({MAX_GRID_Y})")
        norm = norm_w is not None
        self._gate_up[qtype, norm].prepared_async_call(
            ((d_ff + WARPS - 1) // WARPS, n_tokens * k), (32 * WARPS, 1, 1), stream,
            int(w_gate), int(w_up), int(b_gate), int(b_up), d_ff, cols, int(x),
            int(norm_w or 0), float(eps), int(ids), k, float(alpha), float(limit), int(h),
            pdl=pdl,
        )  # fmt: skip
        self.launches += 1

    def down(
        self, qtype, w_down, b_down, rows: int, d_ff: int, h, ids, weights, k: int,
        n_tokens: int, y, stream, *, accumulate: bool = True, pdl=False,
    ) -> None:  # fmt: skip
        """y (n_tokens, rows) (+)= sum_j weights[t, j] * (W_down[e] @ h[t, j] + b_down[e]),
        e = ids[t, j]; W_down (n_experts, rows, d_ff) raw blocks, b_down (n_experts, rows) f32,
        h (n_tokens, k, d_ff) f32. `accumulate`: add to y (the residual stream)."""
        qtype = _checked_experts(qtype, d_ff, k, "expert down")
        if rows <= 0 or n_tokens <= 0:
            return
        if n_tokens > MAX_GRID_Y:
            raise ValueError(f"{n_tokens} tokens exceed one launch ({MAX_GRID_Y})")
        self._down[qtype].prepared_async_call(
            ((rows + WARPS - 1) // WARPS, n_tokens), (32 * WARPS, 1, 1), stream,
            int(w_down), int(b_down), rows, d_ff, int(h), int(ids), int(weights), k, int(y),
            int(accumulate), pdl=pdl,
        )  # fmt: skip
        self.launches += 1
