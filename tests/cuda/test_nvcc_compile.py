"""Every CUDA source of cuda/kernels compiles with nvcc for sm_80 and sm_90 (no GPU needed).

One nvcc call per file builds a fatbin holding both architectures' machine code; the calls run
in parallel. Skipped only where nvcc is absent (CI has it).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor

import pytest

from cuda.compile import KERNEL_DIR, NVCC_OPTIONS, kernel_sources

ARCHS = ("80", "90")


def _compile(nvcc: str, source, out_dir) -> tuple[str, int, str]:
    cmd = [
        nvcc,
        "-fatbin",
        *NVCC_OPTIONS,
        f"-I{KERNEL_DIR}",
        "-o",
        str(out_dir / f"{source.stem}.fatbin"),
    ]
    for arch in ARCHS:
        cmd += ["-gencode", f"arch=compute_{arch},code=sm_{arch}"]
    proc = subprocess.run([*cmd, str(source)], capture_output=True, text=True, timeout=300)
    return source.name, proc.returncode, proc.stdout + proc.stderr


def test_every_kernel_source_compiles_for_sm80_and_sm90(tmp_path):
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        pytest.skip("nvcc is not installed")
    sources = kernel_sources()
    assert sources, "no .cu files found in cuda/kernels"
    workers = max(2, os.cpu_count() or 2)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = list(pool.map(lambda s: _compile(nvcc, s, tmp_path), sources))
    failures = [f"{name} (exit {rc}):\n{out}" for name, rc, out in results if rc != 0]
    assert not failures, "\n\n".join(failures)
    for source in sources:
        assert (tmp_path / f"{source.stem}.fatbin").stat().st_size > 0
