"""The decode products' kernel variants, their builds, and the default variant of each shape.

Four kinds of decode product (cuda/quant_ops.py's launchers): "mv" (`matvec`), "norm"
(`matvec_norm`, RMSNorm fused), "glu" (`matvec_norm_glu`, gate|up + activation) and "seg"
(`matvec_seg`, up to three matrices of any types). Each kind has variants:

- quant_matvec.cu's kernels ("base"): "plain" (a warp per row), "tall" (a warp per 4 rows, from
  4096 rows), "wide" / "wide4" (2 / 4 warps per row, long rows); "plain" for glu and seg.
- quant_matvec_mr.cu's ("mr-<cfg>"): RPW rows per warp group, WPR warps per row, U slot rounds of
  every row loaded before any is decoded (the first chunk before the PDL wait), WPB warps per
  block; built with GGML_FAST_CVT=1 (exact integer->float without I2F). "mr-p*" (norm only,
  rows of <= 1024 values) are persistent: as many blocks as fit, x * g kept in registers, the
  next row group's loads in flight while the current one is decoded. The configurations
  below must match that file's MVX_KERNELS lists (test_launcher_signatures checks the names).

`MATVEC_DEFAULTS` picks the variant of each shape class; adopting what
bench/bench_matvec_variants.py measured fastest is one entry changed there.
"""

from __future__ import annotations

import os
from typing import NamedTuple

from gguf import GGMLQuantizationType as Q

KINDS = ("mv", "norm", "glu", "seg")
TALL_ROWS = 4096  # from here on, the output head's shape: x traffic dominates
WIDE_SLOTS = 96  # rows of more 8-value slots than this (768+ cols) are "long"
#: ... and of more than this (3072+ cols: qwen2's ffn_down, 4864) "longer"
WIDE4_SLOTS = 384


class Variant(NamedTuple):
    module: str  # "base" (quant_matvec.cu) or "mr" (quant_matvec_mr.cu)
    kernel: str  # the kernel name before its type suffix ("{act}": the GLU's name part)
    outs: int  # outputs per warp group (rows; a GLU's pairs)
    wpr: int  # warps per group
    wpb: int  # warps per thread block
    rounds: int = 0  # mr: slot rounds per chunk (U); 0 for the base kernels
    persistent: bool = False  # a grid that fills the GPU once, warps looping over groups

    def max_cols(self) -> int | None:
        """The longest row a persistent variant takes (its lanes' slots: 32 U), else None."""
        return 8 * 32 * self.rounds if self.persistent else None

    @property
    def per_block(self) -> int:
        return self.wpb // self.wpr * self.outs

    def blocks(self, rows: int) -> int:
        return (rows + self.per_block - 1) // self.per_block

    @property
    def chunk_slots(self) -> int:
        """Slots of a row loaded in one go (mr); rows longer than this take several chunks."""
        return 32 * self.wpr * self.rounds


_BASE_WARPS = 4  # MV_WARPS in quant_matvec.cu
BASE = {
    "mv": {
        "plain": Variant("base", "matvec", 1, 1, _BASE_WARPS),
        "tall": Variant("base", "matvec_tall", 4, 1, _BASE_WARPS),
        "wide": Variant("base", "matvec_wide", 1, 2, _BASE_WARPS),
        "wide4": Variant("base", "matvec_wide4", 1, 4, _BASE_WARPS),
    },
    "norm": {
        "plain": Variant("base", "matvec_norm", 1, 1, _BASE_WARPS),
        "tall": Variant("base", "matvec_norm_tall", 4, 1, _BASE_WARPS),
    },
    "glu": {"plain": Variant("base", "matvec_norm_{act}", 1, 1, _BASE_WARPS)},
    "seg": {"plain": Variant("base", "matvec_seg", 1, 1, _BASE_WARPS)},
}
#: kind -> cfg -> (rows per warp group, warps per row, rounds per chunk, warps per block), as
#: quant_matvec_mr.cu's MVX_KERNELS (a GLU's rows: gate and up, so outputs = rows / 2)
MR_CONFIGS: dict[str, dict[str, tuple[int, int, int, int]]] = {
    "mv": {
        "r1": (1, 1, 4, 4), "r2": (2, 1, 4, 4), "r4": (4, 1, 4, 4), "r1b8": (1, 1, 4, 8),
        "w2": (1, 2, 4, 4), "w4": (1, 4, 5, 4), "w4r2": (2, 4, 5, 4), "w8": (1, 8, 3, 8),
    },
    "norm": {
        "r1": (1, 1, 4, 4), "r2": (2, 1, 4, 4), "r4": (4, 1, 4, 4), "r8": (8, 1, 4, 4),
        "r4b8": (4, 1, 4, 8), "p2": (2, 1, 4, 4), "p4": (4, 1, 4, 4), "p2b8": (2, 1, 4, 8),
    },
    "glu": {
        "r2": (2, 1, 4, 4), "r4": (4, 1, 4, 4), "r2b8": (2, 1, 4, 8), "r4b8": (4, 1, 4, 8),
        "r2o": (2, 1, 4, 4),  # r2 with registers capped for 10 blocks per SM
    },
    "seg": {"r1": (1, 1, 4, 4), "r2": (2, 1, 4, 4), "r1b8": (1, 1, 4, 8)},
}  # fmt: skip
_MR_KERNEL = {"mv": "mvx_mv_{cfg}", "norm": "mvx_norm_{cfg}", "glu": "mvx_{act}_{cfg}",
              "seg": "mvx_seg_{cfg}"}  # fmt: skip
MR_PART = {"mv": 0, "norm": 1, "glu": 2, "seg": 3}  # MVX_PART of each kind's build


def _mr_variants(kind: str) -> dict[str, Variant]:
    out = {}
    for cfg, (rpw, wpr, rounds, wpb) in MR_CONFIGS[kind].items():
        outs = rpw // 2 if kind == "glu" else rpw
        kernel = _MR_KERNEL[kind].replace("{cfg}", cfg)
        persistent = cfg.startswith("p")  # mr_persist: x * g in registers, rows <= 32 U slots
        out[f"mr-{cfg}"] = Variant("mr", kernel, outs, wpr, wpb, rounds, persistent)
    return out


VARIANTS: dict[str, dict[str, Variant]] = {k: BASE[k] | _mr_variants(k) for k in KINDS}

#: The default variant of each shape class ("kind.class"; a "kind.class.TYPE" entry, e.g.
#: "norm.tall.Q8_0", wins for that type). Today's kernels until bench_matvec_variants.py has run
#: on the GPU: adopting a winner is one line here (and the mr builds then load at start-up).
MATVEC_DEFAULTS: dict[str, str] = {
    "mv.short": "plain",  # <= 96 slots (768 cols): o and q|k|v of the small models
    "mv.long": "wide",  # 97..384 slots: qwen2's o (896), gemma3's o (1024) and down (2048)
    "mv.longer": "wide4",  # > 384 slots: qwen2's ffn_down (4864)
    "mv.tall": "tall",  # >= 4096 rows (an unfused head)
    "norm.short": "plain",  # a one-segment q|k|v with the norm fused (SmolLM2)
    "norm.tall": "tall",  # the output heads (Q8_0, 49k..262k rows)
    "glu.short": "plain",  # the fused gate|up (576..1024 cols in the models we serve)
    "glu.long": "plain",
    "seg.short": "plain",  # the segmented q|k|v (qwen2, gemma3)
    "seg.long": "plain",
    # Measured fastest on an NVIDIA H200, 2026-12-01 (bench/bench_matvec_variants.py, cold L2;
    # bench/results/2026-12-01-h200-matvec-variants.txt): per key, the least time summed over
    # the decode products that share it. Qwen2.5's step 633 -> 503 us of products, Gemma 3's
    # 361 -> 293 us, SmolLM2's 373 -> 325 us.
    "seg.long.Q5_0": "mr-r1b8",
    "mv.long.Q5_0": "mr-w4",
    "glu.long.Q5_0": "mr-r4",
    "mv.longer.Q6_K": "mr-w4",
    "mv.longer.Q4_K": "mr-w4",
    "seg.short.Q5_0": "mr-r1b8",
    "mv.long.Q4_K": "mr-w4r2",
    "glu.short.Q5_0": "mr-r2",
    "mv.long.Q6_K": "mr-w4r2",
    "norm.short.Q4_1": "mr-p4",
    "mv.short.Q4_1": "mr-w8",
    "mv.long.Q4_1": "mr-w8",
}


def shape_class(kind: str, rows: int, cols: int) -> str:
    """The shape class of a product: tall (mv / norm from TALL_ROWS rows), else by row length."""
    if kind in ("mv", "norm") and rows >= TALL_ROWS:
        return "tall"
    slots = cols // 8
    if kind == "mv":
        return "longer" if slots > WIDE4_SLOTS else "long" if slots > WIDE_SLOTS else "short"
    return "long" if slots > WIDE_SLOTS else "short"


def default_variant(kind: str, qtype: Q, rows: int, cols: int, table=None) -> str:
    """The variant MATVEC_DEFAULTS (or `table`) names for this product."""
    table = MATVEC_DEFAULTS if table is None else table
    key = f"{kind}.{shape_class(kind, rows, cols)}"
    name = table.get(f"{key}.{Q(qtype).name}", table.get(key, "plain"))
    if name not in VARIANTS[kind]:
        raise ValueError(f"unknown {kind} variant {name!r} for {key}")
    limit = VARIANTS[kind][name].max_cols()
    if limit is not None and cols > limit:  # a persistent head variant: rows too long for it
        name = "tall" if key.endswith(".tall") else "plain"
    return name


def variant(kind: str, name: str) -> Variant:
    try:
        return VARIANTS[kind][name]
    except KeyError:
        raise ValueError(
            f"unknown {kind} variant {name!r} (one of {sorted(VARIANTS.get(kind, {}))})"
        ) from None


def uses_mr(table=None) -> bool:
    """Whether any default names an mr variant (the mr builds must then load at start-up)."""
    return any(v.startswith("mr-") for v in (MATVEC_DEFAULTS if table is None else table).values())


#: tokens per thread block of the batched decode step's kernels (MVB_NT; cuda/quant_rows.py):
#: WORKER_ORCD_BATCH_TILE overrides it for bench/bench_batch_cuda.py's comparisons (any value
#: keeps a row's sums: decision 0028)
BATCH_TILE = int(os.environ.get("WORKER_ORCD_BATCH_TILE", "8"))


def mr_defines(kind: str, struct: str | None = None, suffix: str | None = None) -> dict:
    """Defines of one mr build: a kind and, for every kind but seg, one weight type (its
    ggml_blocks.cuh struct and kernel suffix: "Q5_0", "q5_0"), and the batched tile."""
    defines: dict = {"GGML_FAST_CVT": 1, "MVX_PART": MR_PART[kind], "MVB_NT": BATCH_TILE}
    if kind != "seg":
        defines |= {"MVX_T": struct, "MVX_SFX": suffix}
    return defines
