"""The decode variant table without a GPU: cuda/matvec_variants.py's configurations are the ones
quant_matvec_mr.cu compiles, and the default selection picks what it should per shape."""

from __future__ import annotations

import re

import pytest
from gguf import GGMLQuantizationType as Q

from cuda import matvec_variants as mvv
from cuda.compile import KERNEL_DIR
from cuda.quant_ops import mr_sources, sources


def _configs_in_source() -> dict[str, dict[str, tuple[int, int, int, int]]]:
    """kind -> cfg -> (rows per group, warps per row, rounds, warps per block) as compiled."""
    text = (KERNEL_DIR / "quant_matvec_mr.cu").read_text()
    found: dict[str, dict[str, tuple[int, int, int, int]]] = {k: {} for k in mvv.KINDS}
    num = r"\s*(\d+)"
    for m in re.finditer(rf"MVX_MV\((\w+), sfx,{num},{num},{num},{num}\)", text):
        found["mv"][m[1]] = (int(m[2]), int(m[3]), int(m[4]), int(m[5]))
    for m in re.finditer(
        rf"MVX_K\(norm, (\w+), sfx, true, GLU_NONE,{num},{num},{num},{num}\)", text
    ):
        found["norm"][m[1]] = (int(m[2]), int(m[3]), int(m[4]), int(m[5]))
    for m in re.finditer(rf"MVX_P\((\w+), sfx,{num},{num},{num}\)", text):
        found["norm"][m[1]] = (int(m[2]), 1, int(m[3]), int(m[4]))
    for m in re.finditer(rf"MVX_GLU(?:_O)?\((\w+), sfx,{num},{num}(?:,{num})?\)", text):
        found["glu"][m[1]] = (int(m[2]), 1, 4, int(m[3]))  # MVX_GLU: U = 4, WPR = 1
    for m in re.finditer(rf"MVX_SEG_K\((\w+),{num},{num}\)", text):
        found["seg"][m[1]] = (int(m[2]), 1, 4, int(m[3]))  # mr_seg: U = 4, WPR = 1
    return found


def test_python_configurations_are_the_compiled_ones():
    assert _configs_in_source() == mvv.MR_CONFIGS


#: (kind, qtype, rows, cols) of the models' decode products -> the kernel the defaults pick: the
#: fastest measured on an H200 (bench/results/2026-12-01-h200-matvec-variants.txt)
DEFAULTS = [
    ("glu", Q.Q5_0, 4864, 896, "mr-r4"),  # qwen2 gate|up
    ("mv", Q.Q6_K, 896, 4864, "mr-w4"),  # qwen2 down
    ("mv", Q.Q5_0, 896, 896, "mr-w4"),  # qwen2 o
    ("mv", Q.Q4_K, 640, 1024, "mr-w4r2"),  # gemma3 o
    ("mv", Q.Q4_1, 576, 576, "mr-w8"),  # SmolLM2 o
    ("mv", Q.Q4_1, 576, 1536, "mr-w8"),  # SmolLM2 down
    ("norm", Q.Q8_0, 151_936, 896, "tall"),  # qwen2 head
    ("norm", Q.Q4_1, 960, 576, "mr-p4"),  # SmolLM2 q|k|v
    ("seg", Q.Q5_0, 1152, 896, "mr-r1b8"),  # qwen2 q|k|v
    ("mv", Q.F16, 576, 576, "plain"),  # no entry for the type: the shape class's kernel
]


@pytest.mark.parametrize(("kind", "qtype", "rows", "cols", "name"), DEFAULTS)
def test_the_defaults_are_the_measured_fastest(kind, qtype, rows, cols, name):
    assert mvv.default_variant(kind, qtype, rows, cols) == name
    assert mvv.uses_mr()  # so the engine builds quant_matvec_mr.cu beside today's modules
    assert [f for f, _ in sources()][:3] == ["quant_matvec.cu", "quant_embed.cu", "quant_matmul.cu"]
    assert "quant_matvec_mr.cu" in [f for f, _ in sources()]


def test_a_table_entry_picks_a_variant_and_a_type_entry_wins():
    table = {**mvv.MATVEC_DEFAULTS, "norm.tall": "mr-r4", "norm.tall.Q8_0": "mr-p4"}
    assert mvv.default_variant("norm", Q.Q8_0, 151_936, 896, table) == "mr-p4"
    assert mvv.default_variant("norm", Q.Q4_1, 151_936, 896, table) == "mr-r4"
    assert mvv.uses_mr(table)
    # a persistent variant holds rows of <= 1024 values: longer ones fall back to today's
    assert mvv.default_variant("norm", Q.Q8_0, 151_936, 2048, table) == "tall"
    with pytest.raises(ValueError, match="unknown glu variant"):
        mvv.default_variant("glu", Q.Q5_0, 10, 896, {"glu.long": "wide4"})  # 112 slots: long


def test_mr_builds_are_one_per_kind_and_type_plus_the_segmented_one():
    specs = mr_sources([Q.Q5_0, Q.Q8_0])
    assert len(specs) == 7 and all(f == "quant_matvec_mr.cu" for f, _ in specs)
    tile = mvv.BATCH_TILE  # the batched step's tokens per block, in every mr build
    assert specs[-1][1] == {"GGML_FAST_CVT": 1, "MVX_PART": 3, "MVB_NT": tile}
    assert {
        "GGML_FAST_CVT": 1,
        "MVX_PART": 2,
        "MVX_T": "Q8_0",
        "MVX_SFX": "q8_0",
        "MVB_NT": tile,
    } in [d for _, d in specs]
    assert sources(fast_cvt=True)[0][1]["GGML_FAST_CVT"] == 1
    assert "GGML_FAST_CVT" not in sources(fast_cvt=False)[0][1]  # the cache key of today's build


def test_variant_geometry():
    head = mvv.variant("norm", "mr-p4")
    assert head.persistent and head.max_cols() == 1024 and head.per_block == 16
    glu = mvv.variant("glu", "mr-r4b8")
    assert glu.outs == 2 and glu.per_block == 16 and glu.blocks(4864) == 304
    down = mvv.variant("mv", "mr-w4")
    assert down.per_block == 1 and down.chunk_slots == 640  # 4864 cols: 608 slots, one chunk
    with pytest.raises(ValueError, match="unknown mv variant"):
        mvv.variant("mv", "mr-p4")
