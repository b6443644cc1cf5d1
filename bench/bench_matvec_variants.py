"""Every decode matvec variant at the decode shapes of Qwen2.5-0.5B, Gemma-3-270M and SmolLM2-135M
(random weights of the real types, no model file), in one process on one GPU.

    python3 bench/bench_matvec_variants.py [--models qwen2,gemma3,smollm2] [--reps 40]
        [--replays 15] [--no-pdl] [--budget-s 90] [--dry-run]

Variants: quant_matvec.cu's kernels as built today ("plain", "tall", "wide", "wide4"), the same
built with GGML_FAST_CVT=1 ("+cvt"), and quant_matvec_mr.cu's ("mr-..."; always fast-cvt):
cuda/matvec_variants.py says what each is. Timing: --reps launches of one variant captured in a
CUDA graph (programmatic dependent launch between them unless --no-pdl, as the decode step
runs; more launches where a matrix is small, so that every weight copy is used), replayed
--replays times, each replay timed with CUDA events; the figure is the median per launch.
L2: cold. Every launch reads its own copy of the weights, and between two uses of one copy
>= 100 MB of other copies are read (twice the H200's 50 MB L2; an output head alone exceeds
it), because a decode step reads each weight once and the ~350 MB that a Qwen step reads do
not fit L2 either: a warm-L2 figure would flatter the small matrices. x, g and y stay warm,
as in the real step.

Printed per product: us per call, weight GB/s, % of the 4.8 TB/s peak, the relative deviation
from today's default (max |y - y_default| / max |y_default|: ~1e-7 or exactly 0), and the
fastest marked "*". Then per model: the step's products with today's defaults and with each
product's fastest, and the MATVEC_DEFAULTS entries (cuda/matvec_variants.py) that would adopt
them. JSON of every timing goes to $OUT/matvec_variants.json when $OUT is set. --dry-run builds
and prints the plan without a GPU (no PyCUDA import).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import NamedTuple

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gguf import GGML_QUANT_SIZES  # noqa: E402
from gguf import GGMLQuantizationType as Q  # noqa: E402

from cuda import matvec_variants as mvv  # noqa: E402


class Case(NamedTuple):
    model: str
    product: str
    kind: str  # mv / norm / glu / seg (cuda/matvec_variants.py)
    mats: tuple[tuple[Q, int], ...]  # (type, rows) of each matrix (several: a segmented q|k|v)
    cols: int
    count: int  # launches of this product per decode step
    accumulate: bool = False
    act: str = "silu"
    bias: bool = False

    @property
    def rows(self) -> int:
        return sum(r for _, r in self.mats) // (2 if self.kind == "glu" else 1)

    @property
    def nbytes(self) -> int:
        return sum(r * self.cols // GGML_QUANT_SIZES[t][0] * GGML_QUANT_SIZES[t][1]
                   for t, r in self.mats)  # fmt: skip

    @property
    def label(self) -> str:
        types = "|".join(t.name for t, _ in self.mats)
        return f"{self.model} {self.product} {self.kind} {types} {self.rows}x{self.cols}"

    def default_key(self) -> str:
        return (
            f"{self.kind}.{mvv.shape_class(self.kind, self.rows, self.cols)}.{self.mats[0][0].name}"
        )


def plan() -> dict[str, list[Case]]:
    """The decode products of each model (types of the real Q4_K_M files; qwen2 and gemma3
    have "more bits" layers, attn_v Q8_0 and ffn_down Q6_K, in 12 of 24 / 9 of 18 layers)."""
    qwen = [
        Case(
            "qwen2",
            "norm+qkv (v Q8_0)",
            "seg",
            ((Q.Q5_0, 896), (Q.Q5_0, 128), (Q.Q8_0, 128)),
            896,
            12,
            bias=True,
        ),
        Case(
            "qwen2",
            "norm+qkv (v Q5_0)",
            "seg",
            ((Q.Q5_0, 896), (Q.Q5_0, 128), (Q.Q5_0, 128)),
            896,
            12,
            bias=True,
        ),
        Case("qwen2", "o", "mv", ((Q.Q5_0, 896),), 896, 24, accumulate=True),
        Case("qwen2", "norm+gate|up+silu", "glu", ((Q.Q5_0, 2 * 4864),), 896, 24),
        Case("qwen2", "down Q6_K", "mv", ((Q.Q6_K, 896),), 4864, 12, accumulate=True),
        Case("qwen2", "down Q4_K", "mv", ((Q.Q4_K, 896),), 4864, 12, accumulate=True),
        Case("qwen2", "head", "norm", ((Q.Q8_0, 151_936),), 896, 1),
    ]
    gemma = [
        Case(
            "gemma3",
            "norm+qkv (v Q8_0)",
            "seg",
            ((Q.Q5_0, 1024), (Q.Q5_0, 256), (Q.Q8_0, 256)),
            640,
            9,
        ),
        Case(
            "gemma3",
            "norm+qkv (v Q5_0)",
            "seg",
            ((Q.Q5_0, 1024), (Q.Q5_0, 256), (Q.Q5_0, 256)),
            640,
            9,
        ),
        Case("gemma3", "o", "mv", ((Q.Q4_K, 640),), 1024, 18),
        Case("gemma3", "norm+gate|up+gelu", "glu", ((Q.Q5_0, 2 * 2048),), 640, 18, act="gelu_tanh"),
        Case("gemma3", "down Q6_K", "mv", ((Q.Q6_K, 640),), 2048, 9),
        Case("gemma3", "down Q4_K", "mv", ((Q.Q4_K, 640),), 2048, 9),
        Case("gemma3", "head (tied)", "norm", ((Q.Q8_0, 262_144),), 640, 1),
    ]
    smol = [  # SmolLM2-135M Q4_1: q|k|v one type, so matvec_norm, not the segmented kernel
        Case("smollm2", "norm+qkv", "norm", ((Q.Q4_1, 960),), 576, 30),
        Case("smollm2", "o", "mv", ((Q.Q4_1, 576),), 576, 30, accumulate=True),
        Case("smollm2", "norm+gate|up+silu", "glu", ((Q.Q4_1, 2 * 1536),), 576, 30),
        Case("smollm2", "down", "mv", ((Q.Q4_1, 576),), 1536, 30, accumulate=True),
        Case("smollm2", "head", "norm", ((Q.Q8_0, 49_152),), 576, 1),
    ]  # fmt: skip
    return {"qwen2": qwen, "gemma3": gemma, "smollm2": smol}


def variants(case: Case) -> list[tuple[str, str, str]]:
    """(label, build, variant) to time: build "base" = today's quant_matvec.cu, "cvt" = the
    fast-conversion builds (quant_matvec.cu with GGML_FAST_CVT=1, and the mr kernels)."""
    out = []
    for name, var in mvv.VARIANTS[case.kind].items():
        if var.persistent and case.cols > var.max_cols():
            continue
        if var.module == "base":
            out.append((name, "base", name))
            out.append((f"{name}+cvt", "cvt", name))
        else:
            out.append((name, "cvt", name))
    return out


def dry_run(cases: list[Case]) -> None:
    n = 0
    for case in cases:
        vs = variants(case)
        n += len(vs)
        print(f"{case.label:52s} {case.nbytes / 1e6:7.2f} MB x{case.count:<3d} "
              f"default {mvv.default_variant(case.kind, case.mats[0][0], case.rows, case.cols)}:"
              f" {' '.join(label for label, _, _ in vs)}")  # fmt: skip
    types = sorted({t.name for c in cases for t, _ in c.mats})
    print(f"{len(cases)} products, {n} timings; mr builds for {', '.join(types)}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="qwen2,gemma3,smollm2", help="comma-separated subset")
    ap.add_argument("--reps", type=int, default=40, help="launches per captured graph")
    ap.add_argument("--replays", type=int, default=15, help="timed replays (median)")
    ap.add_argument("--no-pdl", action="store_true", help="launch without PDL")
    ap.add_argument(
        "--budget-s", type=float, default=90.0, help="timing seconds; what is left is skipped"
    )
    ap.add_argument("--dry-run", action="store_true", help="print the plan; no GPU")
    args = ap.parse_args()
    models = [m for m in args.models.split(",") if m]
    table = plan()
    unknown = set(models) - set(table)
    if unknown:
        ap.error(f"unknown models {sorted(unknown)} (of {sorted(table)})")
    cases = [c for m in models for c in table[m]]
    if args.dry_run:
        dry_run(cases)
        return
    from matvec_variants_gpu import run  # PyCUDA only past this point

    run(cases, variants, args)


if __name__ == "__main__":
    main()
