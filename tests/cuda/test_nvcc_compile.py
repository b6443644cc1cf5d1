"""CUDA sources without a GPU: every kernel file compiles with nvcc for sm_80 and sm_90, and the
block decoders the quant kernels share, compiled for the CPU, match runtime.quants bit for bit.

One nvcc call per (file, defines) builds a fatbin holding both architectures' machine code; the
calls run in parallel. Skipped only where nvcc is absent, except under CI (the CI environment
variable set), where a missing nvcc fails.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from gguf import GGMLQuantizationType as Q

from cuda.compile import KERNEL_DIR, NVCC_OPTIONS, kernel_sources
from runtime.quants import dequantize
from tests.cuda.ggml_random import TYPES, block_cols, random_weights

ARCHS = ("80", "90")
#: builds beyond the default one: file name -> extra -D options of each
EXTRA_BUILDS = {
    "quant_matvec.cu": [["-DMV_BATCH=1"], ["-DMV_PRE=0"], ["-DGGML_FAST_CVT=1"]],
    # the mr variants: the default build is the segmented kind (every type); the per-type kinds
    # for a 32-value block and a 256-value super-block type here (all eight build on the GPU
    # host, where tests/cuda/test_matvec_variants.py loads them; ~6 s each per arch)
    "quant_matvec_mr.cu": [
        ["-DGGML_FAST_CVT=1", f"-DMVX_PART={part}", f"-DMVX_T={t}", f"-DMVX_SFX={t.lower()}"]
        for part in (0, 1, 2)
        for t in ("Q5_0", "Q6_K")
    ],
    # the engine builds attention for the model's head size: 64 by default (and qwen2), 128
    # for most larger models, 256 for gemma3 (cuda.ops.head_dim_supported)
    "attention.cu": [["-DHEAD_DIM=128"], ["-DHEAD_DIM=256"], ["-DHEAD_DIM=32", "-DATTN_PRE=0"]],
    "attn_prefill.cu": [["-DHEAD_DIM=128"], ["-DHEAD_DIM=256"], ["-DHEAD_DIM=32"]],
    "attn_prefill_tc.cu": [["-DHEAD_DIM=128"], ["-DHEAD_DIM=32"]],  # head_dim <= 128 only
}


@pytest.fixture(scope="module")
def nvcc() -> str:
    path = shutil.which("nvcc")
    if path is None:
        if os.environ.get("CI"):  # CI installs nvcc: its absence there is a broken image
            pytest.fail("nvcc is not installed, and CI is set: the kernels went uncompiled")
        pytest.skip("nvcc is not installed")
    return path


def _compile(nvcc: str, source: Path, defines: list[str], out: Path) -> tuple[str, int, str]:
    cmd = [nvcc, "-fatbin", *NVCC_OPTIONS, *defines, f"-I{KERNEL_DIR}", "-o", str(out)]
    for arch in ARCHS:
        cmd += ["-gencode", f"arch=compute_{arch},code=sm_{arch}"]
    proc = subprocess.run([*cmd, str(source)], capture_output=True, text=True, timeout=300)
    return f"{source.name} {' '.join(defines)}", proc.returncode, proc.stdout + proc.stderr


def test_every_kernel_source_compiles_for_sm80_and_sm90(nvcc, tmp_path):
    sources = kernel_sources()
    assert sources, "no .cu files found in cuda/kernels"
    jobs = [(s, []) for s in sources]
    jobs += [(s, d) for s in sources for d in EXTRA_BUILDS.get(s.name, [])]
    outs = [tmp_path / f"{i}-{s.stem}.fatbin" for i, (s, _) in enumerate(jobs)]
    with ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2)) as pool:
        results = list(
            pool.map(lambda j: _compile(nvcc, *j[0], j[1]), zip(jobs, outs, strict=True))
        )
    failures = [f"{name} (exit {rc}):\n{out}" for name, rc, out in results if rc != 0]
    assert not failures, "\n\n".join(failures)
    assert all(out.stat().st_size > 0 for out in outs)


@pytest.mark.parametrize("fast_cvt", [0, 1], ids=["i2f", "fast-cvt"])
def test_cuda_block_decoders_match_numpy_on_the_host(nvcc, tmp_path, fast_cvt):
    """Both integer->float builds (GGML_FAST_CVT) decode every block exactly; slot8 is the
    kernels' raw + decode pair, so the split loaders are checked too."""
    exe = tmp_path / "host_decoders"
    harness = Path(__file__).with_name("host_decoders.cu")
    cmd = [nvcc, "-O2", "-std=c++17", f"-DGGML_FAST_CVT={fast_cvt}", f"-I{KERNEL_DIR}"]
    cmd += ["-o", str(exe), str(harness)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rng = np.random.default_rng(2026)
    for index, qtype in enumerate(TYPES):
        qk = block_cols(qtype)
        rows, cols = 48, qk * 4  # 192 blocks of random bits: every scale / nibble pattern
        raw = random_weights(qtype, rows, cols, rng)
        if qtype == Q.MXFP4:  # every scale byte: denormal (0, 1), normal, overflow to inf (255)
            raw.reshape(-1, 17)[:, 0] = np.arange(raw.size // 17) * 37 % 256
        src, dq4, slot8 = (tmp_path / f"{qtype.name}.{k}" for k in ("in", "dq4", "slot8"))
        raw.tofile(src)
        args = [str(exe), str(index), str(rows * cols // qk), str(src), str(dq4), str(slot8)]
        subprocess.run(args, check=True, timeout=60)
        ref = dequantize(raw, qtype, (rows, cols)).reshape(-1)
        np.testing.assert_array_equal(
            np.fromfile(dq4, np.float32), ref, err_msg=f"{qtype.name} dq4"
        )
        np.testing.assert_array_equal(
            np.fromfile(slot8, np.float32), ref, err_msg=f"{qtype.name} slot8"
        )
