"""Every kernel the launchers prepare exists, with the argument list the launcher packs (no GPU).

A launcher whose argument letters disagree with the kernel's parameters does not fail cleanly
on the GPU: the driver copies the wrong bytes and the kernel reads garbage or writes out of
bounds. So `Ops` and `QuantKernels` are built here against recording stand-ins for the module
loaders (and for PyCUDA's device query); each (file, defines) they load is compiled to PTX with
nvcc, and every prepared kernel's `.param` list must match its letters: P and l are 64-bit
(.u64 / .s64), i and I 32-bit integers, f .f32, d .f64. Skipped where nvcc is absent, except
under CI, as test_nvcc_compile.py.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import types
from concurrent.futures import ThreadPoolExecutor

import pytest
from gguf import GGMLQuantizationType as Q

from cuda.compile import KERNEL_DIR, NVCC_OPTIONS

PTX_TYPES = {"P": {"u64", "s64", "b64"}, "l": {"u64", "s64", "b64"}, "i": {"u32", "s32", "b32"},
             "I": {"u32", "s32", "b32"}, "f": {"f32"}, "d": {"f64"}}  # fmt: skip


class _Kernel:
    def __init__(self, record: list, key: tuple, name: str):
        self._record, self._key, self._name = record, key, name

    def prepare(self, arg_types: str) -> _Kernel:
        self._record.append((self._key, self._name, arg_types))
        return self


class _Module:
    def __init__(self, record: list, filename: str, defines):
        self._record = record
        self._key = (filename, tuple(sorted((defines or {}).items())))

    def get_function(self, name: str) -> _Kernel:
        return _Kernel(self._record, self._key, name)


@pytest.fixture(scope="module")
def nvcc() -> str:
    path = shutil.which("nvcc")
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("nvcc is not installed, and CI is set: the kernels went uncompiled")
        pytest.skip("nvcc is not installed")
    return path


@pytest.fixture(scope="module")
def prepared():
    """(file, defines) -> [(kernel, letters)] as Ops(64), Ops(256) and QuantKernels (with the
    mr variants of one type) ask for them."""
    import cuda.moe_ops as moe_mod
    import cuda.ops as ops_mod
    import cuda.quant_ops as quant_mod

    record: list = []
    mp = pytest.MonkeyPatch()
    try:
        mp.setattr(quant_mod, "prefetch", lambda specs: None)
        for mod in (ops_mod, quant_mod):
            mp.setattr(mod, "load_module", lambda f, defines=None: _Module(record, f, defines))
        for mod in (ops_mod, quant_mod, moe_mod):
            mp.setattr(
                mod, "load_driver_module", lambda f, defines=None: _Module(record, f, defines)
            )
        device = types.SimpleNamespace(get_attribute=lambda attr: 132)
        drv = types.SimpleNamespace(
            Context=types.SimpleNamespace(get_device=lambda: device),
            device_attribute=types.SimpleNamespace(MULTIPROCESSOR_COUNT=16),
        )
        pycuda = types.ModuleType("pycuda")
        pycuda.driver = drv
        mp.setitem(sys.modules, "pycuda", pycuda)
        mp.setitem(sys.modules, "pycuda.driver", drv)
        ops_mod.Ops(64)
        ops_mod.Ops(256)
        quant_mod.QuantKernels()
        quant_mod.QuantKernels(batched_loads=True, preload=False)
        # the mr variants: every kind for one type (the kernel names and arguments do not
        # depend on it) and the segmented kernels, which take every type
        quant_mod.QuantKernels(fast_cvt=True, mr=[Q.Q5_0])
        moe_mod.MoeKernels()
    finally:
        mp.undo()
    by_source: dict[tuple, set] = {}
    for key, name, letters in record:
        by_source.setdefault(key, set()).add((name, letters))
    return by_source


def _ptx_params(nvcc: str, filename: str, defines: tuple, out_dir) -> dict[str, list[str]]:
    out = out_dir / f"{filename}-{abs(hash(defines))}.ptx"
    flags = [f"-D{k}" if v is None else f"-D{k}={v}" for k, v in defines]
    cmd = [nvcc, "-ptx", *NVCC_OPTIONS, *flags, f"-I{KERNEL_DIR}", "-arch=sm_90", "-o", str(out)]
    proc = subprocess.run(
        [*cmd, str(KERNEL_DIR / filename)], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    text = out.read_text()
    entries = {}
    for m in re.finditer(r"\.entry\s+(\w+)\s*\((.*?)\)", text, re.S):
        entries[m.group(1)] = re.findall(r"\.param\s+\.(\w+)\s+\w+", m.group(2))
    return entries


def test_every_prepared_kernel_matches_its_ptx_parameters(nvcc, prepared, tmp_path):
    assert any(f == "quant_matvec.cu" for f, _ in prepared), "the recording saw no quant kernels"
    sources = sorted(prepared)
    with ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2)) as pool:
        ptx = list(pool.map(lambda src: _ptx_params(nvcc, *src, tmp_path), sources))
    problems = []
    for (filename, defines), entries in zip(sources, ptx, strict=True):
        for name, letters in sorted(prepared[(filename, defines)]):
            params = entries.get(name)
            if params is None:
                problems.append(f"{filename} {defines}: no kernel {name}")
            elif len(params) != len(letters) or any(
                p not in PTX_TYPES[c] for p, c in zip(params, letters, strict=False)
            ):
                problems.append(f"{filename}: {name} takes {params}, launcher packs {letters!r}")
    assert not problems, "\n".join(problems)
