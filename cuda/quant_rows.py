"""The batched decode step's products: the decode kernels for several tokens at once (mvb_*).

One launch computes a product for `n_tok` rows of x (`xs` floats apart) into rows of y (`ys`
floats apart; row `yrow[t]` of y for token t when a device int32 array `yrow` is given: the
output head writes each sequence's logits into its slot's row). The kernels are
quant_matvec_mr.cu's row groups with a tile of BATCH_TILE tokens per thread block (grid x):
each weight slot is loaded and decoded once per tile and its products are summed per token
in the order of the single-token kernels. Which kernel a product takes follows the
single-token default (cuda/matvec_variants.py) only through its warps per row: per row the
arithmetic depends on that alone, so a token's outputs are bit for bit those of the decode
step it would run alone (batch invariance, decision 0028).
"""

from __future__ import annotations

from typing import Any

from gguf import GGMLQuantizationType as Q

from cuda import matvec_variants as mvv

BATCH_TILE = mvv.BATCH_TILE  # tokens per thread block (MVB_NT in quant_matvec_mr.cu)
#: batched kernel config -> (rows per warp group, warps per row, warps per block), as
#: quant_matvec_mr.cu's MVB_* lists; "b<W>" is the one for W warps per row
#: (more rows per warp than the single-token kernels: each x load serves them all, and x loads
#: are what bounds the batched products; a row's sum is the same for any rows per warp)
ROW_CONFIGS = {"b1": (4, 1, 4), "b2": (2, 2, 4), "b4": (2, 4, 4), "b8": (2, 8, 8)}
SEG_RPW = 2  # rows per warp of mvb_seg_b1
_ROWS = "iiiP"  # n_tok, xs, ys, yrow
_MV = "PiiPPi" + _ROWS
_NORM = "PiiPPfPi" + _ROWS
_SEG = "iPPfPPi" + "Pii" * 3 + _ROWS


class RowProducts:
    """Mixin of cuda.quant_ops.QuantKernels: the batched launchers, from its mr modules."""

    _rows: dict[tuple, Any]
    _seg_args: Any  # QuantKernels'

    def _prepare_rows(self, module, kind: str, qtype, suffix: str | None, glu_kernels) -> None:
        """The mvb kernels of one mr build (`kind`, one weight type; seg: every type)."""
        if kind == "mv":
            for cfg in ROW_CONFIGS:
                fn = module.get_function(f"mvb_mv_{cfg}_{suffix}").prepare(_MV)
                self._rows["mv", cfg, qtype, None] = fn
        elif kind == "norm":
            self._rows["norm", "b1", qtype, None] = module.get_function(
                f"mvb_norm_b1_{suffix}"
            ).prepare(_NORM)
        elif kind == "glu":
            for act, part in glu_kernels.items():
                fn = module.get_function(f"mvb_{part}_b1_{suffix}").prepare(_NORM)
                self._rows["glu", "b1", qtype, act] = fn
        else:
            for norm in (False, True):
                fn = module.get_function("mvb_seg_b1" + ("_norm" if norm else "")).prepare(_SEG)
                self._rows["seg", "b1", None, norm] = fn

    def rows_supported(self, qtype) -> bool:
        return ("mv", "b1", Q(qtype), None) in self._rows

    def _row_kernel(self, kind: str, cfg: str, qtype, extra=None):
        fn = self._rows.get((kind, cfg, qtype, extra))
        if fn is None:
            raise ValueError(f"no batched {kind} kernel for {Q(qtype).name if qtype else 'seg'}")
        return fn

    @staticmethod
    def _grid(blocks: int, n_tok: int) -> tuple[int, int]:
        """(token tiles, row-group blocks): a row group's tiles are neighbours in the launch
        order, so they share its weights in L2."""
        return (n_tok + BATCH_TILE - 1) // BATCH_TILE, blocks

    def matvec_rows(
        self, qtype, w_ptr, rows: int, cols: int, x_ptr, n_tok: int, y_ptr, stream, *, xs: int,
        ys: int, accumulate: bool = False, yrow=None, pdl: bool = False,
    ) -> None:  # fmt: skip
        """`matvec` for n_tok tokens: y[t] = W @ x[t] (+ the old y[t])."""
        single = mvv.variant("mv", mvv.default_variant("mv", qtype, rows, cols))
        cfg = f"b{single.wpr}"
        rpw, wpr, wpb = ROW_CONFIGS[cfg]
        fn = self._row_kernel("mv", cfg, Q(qtype))
        per_block = wpb // wpr * rpw
        fn.prepared_async_call(
            self._grid((rows + per_block - 1) // per_block, n_tok), (32 * wpb, 1, 1), stream,
            int(w_ptr), rows, cols, int(x_ptr), int(y_ptr), int(accumulate), n_tok, xs, ys,
            int(yrow or 0), pdl=pdl,
        )  # fmt: skip

    def matvec_norm_rows(
        self, qtype, w_ptr, rows: int, cols: int, x_ptr, norm_w_ptr, eps: float, n_tok: int,
        y_ptr, stream, *, xs: int, ys: int, yrow=None, pdl: bool = False,
    ) -> None:  # fmt: skip
        """`matvec_norm` for n_tok tokens (every norm variant has one warp per row)."""
        fn = self._row_kernel("norm", "b1", Q(qtype))
        rpw, _, wpb = ROW_CONFIGS["b1"]
        fn.prepared_async_call(
            self._grid((rows + wpb * rpw - 1) // (wpb * rpw), n_tok), (32 * wpb, 1, 1), stream,
            int(w_ptr), rows, cols, int(x_ptr), int(norm_w_ptr), float(eps), int(y_ptr), 0,
            n_tok, xs, ys, int(yrow or 0), pdl=pdl,
        )  # fmt: skip

    def matvec_norm_glu_rows(
        self, qtype, w_ptr, d_ff: int, cols: int, x_ptr, norm_w_ptr, eps: float, n_tok: int,
        h_ptr, stream, *, xs: int, ys: int, act: str = "silu", pdl: bool = False,
    ) -> None:  # fmt: skip
        """`matvec_norm_glu` for n_tok tokens (a gate|up pair per warp, as every glu variant)."""
        fn = self._row_kernel("glu", "b1", Q(qtype), act)
        rpw, _, wpb = ROW_CONFIGS["b1"]
        pairs = wpb * rpw // 2  # outputs per block: a gate and an up row each
        fn.prepared_async_call(
            self._grid((d_ff + pairs - 1) // pairs, n_tok), (32 * wpb, 1, 1), stream,
            int(w_ptr), d_ff, cols, int(x_ptr), int(norm_w_ptr), float(eps), int(h_ptr), 0,
            n_tok, xs, ys, 0, pdl=pdl,
        )  # fmt: skip

    def matvec_seg_rows(
        self, segments, cols: int, x_ptr, n_tok: int, y_ptr, stream, *, xs: int, ys: int,
        norm_w_ptr=None, eps: float = 0.0, bias_ptr=None, accumulate: bool = False,
        pdl: bool = False,
    ) -> None:  # fmt: skip
        """`matvec_seg` for n_tok tokens (every seg variant has one warp per row)."""
        segments = list(segments)
        args, total = self._seg_args(segments, cols)
        if total <= 0:
            return
        groups = sum((r + SEG_RPW - 1) // SEG_RPW for _, _, r in segments)  # a warp each
        fn = self._row_kernel("seg", "b1", None, norm_w_ptr is not None)
        _, _, wpb = ROW_CONFIGS["b1"]
        fn.prepared_async_call(
            self._grid((groups + wpb - 1) // wpb, n_tok), (32 * wpb, 1, 1), stream,
            cols, int(x_ptr), int(norm_w_ptr or 0), float(eps), int(y_ptr), int(bias_ptr or 0),
            int(accumulate), *args, n_tok, xs, ys, 0, pdl=pdl,
        )  # fmt: skip
